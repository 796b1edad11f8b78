"""Reference-free preference optimisation on pairs: SimPO, CPO and ORPO.

Batch: the pair pipeline's rows (align_jax/data/pairs.py), as the DPO objective; chosen and
rejected go through the policy as one concatenated batch of 2B rows, and there is no
reference model. Each objective has one loss type, its own name:

- `simpo` (arXiv 2405.14734): `−log σ(β(Lc/|yc| − Lr/|yr|) − γ)`, γ = `simpo_gamma`.
- `cpo` (arXiv 2401.08417): `−log σ(β(Lc − Lr)) + α · NLL(chosen)`, α = `cpo_alpha`.
- `orpo` (arXiv 2403.07691): `NLL(chosen) − λ log σ(log odds_c − log odds_r)`, λ =
  `orpo_lambda`, `odds = p/(1−p)` with p the geometric-mean per-token probability.

`beta` and `label_smoothing` (SimPO, CPO) come from the config as for DPO. The losses are
align_jax.losses' `simpo_loss`, `cpo_loss`, `orpo_loss`; the sum over valid pairs is divided
once by their number.

NLL(chosen) is each chosen completion's token-mean negative log-likelihood (the DPO
objective's `sft` term), averaged over pairs, which keeps gradient accumulation exact. TRL's
CPO/ORPO trainers take one token-mean over all chosen tokens of the batch instead; the two
agree when chosen completions have equal lengths.

Metrics (means over valid pairs), with each method's own implicit reward (SimPO `β L/|y|`,
CPO `β L`, ORPO `λ L/|y|`, as TRL logs them): `reward_accuracy`, `reward_margin`,
`chosen_reward`, `rejected_reward`, `chosen_logps`, `rejected_logps` (summed), and `nll`.
"""

from __future__ import annotations

import jax.numpy as jnp

from align_jax.losses import cpo_loss, orpo_loss, simpo_loss
from align_jax.objectives import Objective, register
from align_jax.objectives.dpo import pair_token_logps


def _build(name: str, config, graphdef) -> Objective:
    o = config.objective
    beta, smoothing = float(o.beta), float(o.label_smoothing)

    def loss_fn(params, frozen, batch, rng):
        del frozen, rng
        n = batch["chosen_tokens"].shape[0]
        token_logps, mask, _ = pair_token_logps(graphdef, params, batch)
        totals = jnp.sum(token_logps, axis=-1)
        lengths = jnp.sum(mask, axis=-1)
        chosen, rejected = totals[:n], totals[n:]
        chosen_len, rejected_len = lengths[:n], lengths[n:]
        nll = -chosen / jnp.maximum(chosen_len, 1.0)
        valid = batch["valid"]
        if name == "simpo":
            losses, rc, rr = simpo_loss(
                chosen, rejected, chosen_lengths=chosen_len, rejected_lengths=rejected_len,
                beta=beta, gamma=float(o.simpo_gamma), label_smoothing=smoothing,
            )  # fmt: skip
        elif name == "cpo":
            losses, rc, rr = cpo_loss(
                chosen, rejected, chosen_nll=nll, beta=beta, alpha=float(o.cpo_alpha),
                label_smoothing=smoothing,
            )  # fmt: skip
        else:
            # log(1 − p) needs mean log-probs < 0: rows without completion tokens (eval
            # padding, a completion truncated away) get a stand-in and carry no loss.
            usable = (valid > 0) & (chosen_len > 0) & (rejected_len > 0)
            safe = lambda x: jnp.where(usable, x, -1.0)  # noqa: E731
            losses, rc, rr = orpo_loss(
                safe(chosen), safe(rejected), chosen_lengths=chosen_len,
                rejected_lengths=rejected_len, chosen_nll=nll, beta=float(o.orpo_lambda),
            )  # fmt: skip
            losses = jnp.where(usable, losses, 0.0)
        count = jnp.sum(valid)
        mean = lambda x: (jnp.sum(x * valid), count)  # noqa: E731
        metrics = {
            "reward_accuracy": mean((rc > rr).astype(jnp.float32)),
            "reward_margin": mean(rc - rr),
            "chosen_reward": mean(rc),
            "rejected_reward": mean(rr),
            "chosen_logps": mean(chosen),
            "rejected_logps": mean(rejected),
            "nll": mean(nll),
        }
        return jnp.sum(losses * valid), (count, metrics)

    return Objective(
        name=name,
        loss_fn=loss_fn,
        batch_kind="pairs",
        tokens_per_batch=lambda batch: int(batch["chosen_tokens"].size * 2),
    )


@register("simpo", loss_types=("simpo",))
def build_simpo(config, graphdef) -> Objective:
    return _build("simpo", config, graphdef)


@register("cpo", loss_types=("cpo",))
def build_cpo(config, graphdef) -> Objective:
    return _build("cpo", config, graphdef)


@register("orpo", loss_types=("orpo",))
def build_orpo(config, graphdef) -> Objective:
    return _build("orpo", config, graphdef)
