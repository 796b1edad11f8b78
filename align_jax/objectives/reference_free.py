"""Reference-free preference optimisation on pairs: SimPO, CPO and ORPO.

Batch: the pair pipeline's rows (align_jax/data/pairs.py), as the DPO objective; chosen and
rejected go through the policy as one concatenated batch of 2B rows, and there is no
reference model. Each objective has one loss type, its own name:

- `simpo` (arXiv 2405.14734): `−log σ(β(Lc/|yc| − Lr/|yr|) − γ)`, γ = `simpo_gamma`.
- `cpo` (arXiv 2401.08417): `−log σ(β(Lc − Lr)) + α · NLL(chosen)`, α = `cpo_alpha`.
- `orpo` (arXiv 2403.07691): `NLL(chosen) − λ log σ(log odds_c − log odds_r)`, λ =
  `orpo_lambda`, `odds = p/(1−p)` with p the geometric-mean per-token probability.

SimPO and CPO also take `beta` and `label_smoothing`, as DPO does. The losses are
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
import ml_collections

from align_jax.losses import cpo_loss, orpo_loss, simpo_loss
from align_jax.models import sequence_logprobs
from align_jax.objectives.base import Objective, register
from align_jax.objectives.common import pair_metrics, pair_rows


def simpo_defaults() -> ml_collections.ConfigDict:
    """SimPO's `config.objective` keys. γ = 1 is the SimPO repository's base setting (with
    β = 2); TRL's `simpo_gamma` defaults to 0.5."""
    return ml_collections.ConfigDict(
        {
            "name": "simpo",  # the objective this config trains
            "loss_type": "simpo",  # the only one
            "beta": 0.1,  # β: scale of the length-normalised log-prob margin
            "label_smoothing": 0.0,  # ε: assumed label noise, as DPO's sigmoid loss
            "simpo_gamma": 1.0,  # γ: target reward margin subtracted inside the sigmoid
        }
    )


def cpo_defaults() -> ml_collections.ConfigDict:
    """CPO's `config.objective` keys; `cpo_alpha` weighs the NLL term on chosen (TRL's name)."""
    return ml_collections.ConfigDict(
        {
            "name": "cpo",  # the objective this config trains
            "loss_type": "cpo",  # the only one
            "beta": 0.1,  # β: scale of the summed log-prob margin Lc − Lr
            "label_smoothing": 0.0,  # ε: assumed label noise, as DPO's sigmoid loss
            "cpo_alpha": 1.0,  # α: weight of the NLL term on the chosen completion
        }
    )


def orpo_defaults() -> ml_collections.ConfigDict:
    """ORPO's `config.objective` keys; `orpo_lambda` weighs the odds-ratio term (TRL calls it
    beta)."""
    return ml_collections.ConfigDict(
        {
            "name": "orpo",  # the objective this config trains
            "loss_type": "orpo",  # the only one
            "orpo_lambda": 0.1,  # λ: weight of the odds-ratio term beside the chosen NLL
        }
    )


def _build(name: str, config, graphdef) -> Objective:
    o = config.objective

    def losses_and_rewards(chosen, rejected, chosen_len, rejected_len, nll, valid):
        if name == "simpo":
            return simpo_loss(
                chosen, rejected, chosen_lengths=chosen_len, rejected_lengths=rejected_len,
                beta=float(o.beta), gamma=float(o.simpo_gamma),
                label_smoothing=float(o.label_smoothing),
            )  # fmt: skip
        if name == "cpo":
            return cpo_loss(
                chosen, rejected, chosen_nll=nll, beta=float(o.beta), alpha=float(o.cpo_alpha),
                label_smoothing=float(o.label_smoothing),
            )  # fmt: skip
        # log(1 − p) needs mean log-probs < 0: rows without completion tokens (eval
        # padding, a completion truncated away) get a stand-in and carry no loss.
        usable = (valid > 0) & (chosen_len > 0) & (rejected_len > 0)
        safe = lambda x: jnp.where(usable, x, -1.0)  # noqa: E731
        losses, rc, rr = orpo_loss(
            safe(chosen), safe(rejected), chosen_lengths=chosen_len,
            rejected_lengths=rejected_len, chosen_nll=nll, beta=float(o.orpo_lambda),
        )  # fmt: skip
        return jnp.where(usable, losses, 0.0), rc, rr

    def loss_fn(params, frozen, batch, rng):
        del frozen, rng
        n = batch["chosen_tokens"].shape[0]
        token_logps, mask, _ = sequence_logprobs(graphdef, params, *pair_rows(batch))
        totals = jnp.sum(token_logps, axis=-1)
        lengths = jnp.sum(mask, axis=-1)
        chosen, rejected = totals[:n], totals[n:]
        nll = -chosen / jnp.maximum(lengths[:n], 1.0)
        valid = batch["valid"]
        losses, rc, rr = losses_and_rewards(chosen, rejected, lengths[:n], lengths[n:], nll, valid)
        metrics = pair_metrics(valid, rc, rr, chosen, rejected)
        metrics["nll"] = (jnp.sum(nll * valid), jnp.sum(valid))
        return jnp.sum(losses * valid), (jnp.sum(valid), metrics)

    return Objective(name, loss_fn, batch_kind="pairs")


@register("simpo", loss_types=("simpo",), defaults=simpo_defaults)
def build_simpo(config, graphdef) -> Objective:
    return _build("simpo", config, graphdef)


@register("cpo", loss_types=("cpo",), defaults=cpo_defaults)
def build_cpo(config, graphdef) -> Objective:
    return _build("cpo", config, graphdef)


@register("orpo", loss_types=("orpo",), defaults=orpo_defaults)
def build_orpo(config, graphdef) -> Objective:
    return _build("orpo", config, graphdef)
