"""Online DPO (arXiv 2402.04792): the DPO family's loss on pairs the live policy samples.

Each step's batch is one rollout batch (align_jax/training/online.py): P prompts × G =
`num_generations` completions of the current policy, each scored by the reward functions
(`config.rewards`: a reward model, a verifiable reward, or both, weighted). `prepare_fn`
(jitted, no gradient) picks each prompt's highest-scored completion as chosen and its
lowest-scored as rejected (G = 2 is the paper's recipe), drops prompts whose completions
all scored the same (ties, counted in `tie_fraction`), and computes the frozen reference's
summed log-probs of both. The update (one per rollout) is the DPO family's loss on those
pairs, any `loss_type` of the offline objective (comma-joined combinations with
`loss_weights`, `label_smoothing`, `f_divergence`), summed over valid pairs and divided
once by their number.

Log-probs are the policy's own (temperature 1), as in offline DPO: the implicit reward
`β log π/π_ref` does not depend on the temperature the pairs were sampled at.

Metrics: the DPO pair metrics (implicit reward accuracy and margin, both sides' rewards and
log-probs), `kl_ref` (the exact next-token KL to the reference over both sides' completion
tokens), `tie_fraction`, `score_margin` (chosen minus rejected score, over valid pairs);
the source adds the rewards (`reward`, `reward/<name>`), lengths and the time split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from align_jax.losses import combined_dpo_loss
from align_jax.objectives.base import Objective, register
from align_jax.objectives.common import (
    kl_ref_metric,
    pair_metrics,
    policy_token_logps,
    rollout_logps,
)
from align_jax.objectives.dpo import parse_loss_types
from align_jax.objectives.grpo import check_prepare_micro_batches, online_sections

_ROW_FIELDS = ("tokens", "positions", "segment_ids", "completion_mask")


def defaults() -> ml_collections.ConfigDict:
    """Online DPO's `config.objective` keys (DPO's loss options, the pair sampling)."""
    return ml_collections.ConfigDict(
        {
            "name": "online_dpo",  # the objective this config trains
            "loss_type": "sigmoid",  # as dpo's: a DPO_LOSS_TYPES entry or sft, or comma-joined
            "beta": 0.1,  # β: implicit reward β·(log π − log π_ref)
            "label_smoothing": 0.0,  # ε: label noise, for the loss types that use it (as dpo)
            "loss_weights": "",  # comma list, one per comma-joined loss_type; "" = all 1
            # reverse_kl (plain DPO) | forward_kl | js_divergence | alpha_divergence
            "f_divergence": "reverse_kl",
            "f_alpha": 0.5,  # α of alpha_divergence, in (0, 1]
            "num_generations": 2,  # completions per prompt: best and worst become the pair
            "reference_from": "",  # the frozen reference's run or checkpoint; "" = config.init_from
        }
    )


def _pair_rows(batch: dict, group: int):
    """(chosen rows, rejected rows, chosen scores, rejected scores, valid) of a rollout batch
    of P groups of `group` adjacent rows: each group's best and worst row by reward (the
    first of equals), valid where they differ."""
    rewards = batch["rewards"].reshape(-1, group)
    base = jnp.arange(rewards.shape[0]) * group
    best = base + jnp.argmax(rewards, axis=1)
    worst = base + jnp.argmin(rewards, axis=1)
    chosen = {k: jnp.take(batch[k], best, axis=0) for k in _ROW_FIELDS}
    rejected = {k: jnp.take(batch[k], worst, axis=0) for k in _ROW_FIELDS}
    high, low = jnp.max(rewards, axis=1), jnp.min(rewards, axis=1)
    return chosen, rejected, high, low, (high > low).astype(jnp.float32)


def _sequence_logps(graphdef, params, rows: dict):
    """(summed log-probs [N] of the completion tokens, per-token log-probs, logits)."""
    token_logps, logits = policy_token_logps(graphdef, params, rows, 1.0)
    mask = rows["completion_mask"]
    token_logps = jnp.where(mask > 0, token_logps, 0.0)
    return jnp.sum(token_logps, axis=-1), token_logps, logits


@register("online_dpo", loss_types=None, defaults=defaults, sections=online_sections)
def build(config, graphdef) -> Objective:
    o = config.objective
    types, weights = parse_loss_types(o)
    group = o.num_generations
    if not isinstance(group, int) or group < 2:
        raise ValueError(
            f"config.objective.num_generations={group!r}; online DPO compares completions "
            "of one prompt: expected an integer >= 2"
        )
    beta = float(o.beta)
    micro_batches = check_prepare_micro_batches(
        config, config.data.batch_size, "each side of the pairs (data.batch_size)"
    )

    def reference_totals(params, rows):
        """Summed log-probs [N] of the rows' completion tokens, over micro-batches of rows."""
        logps = rollout_logps(graphdef, params, rows, 1.0, micro_batches)
        return jnp.sum(jnp.where(rows["completion_mask"] > 0, logps, 0.0), axis=-1)

    def prepare_fn(params, frozen, batch, objective_state):
        del params
        chosen, rejected, high, low, valid = _pair_rows(batch, group)
        out = {f"chosen_{k}": v for k, v in chosen.items()}
        out.update({f"rejected_{k}": v for k, v in rejected.items()})
        out["ref_chosen_logps"] = reference_totals(frozen["reference"], chosen)
        out["ref_rejected_logps"] = reference_totals(frozen["reference"], rejected)
        out["valid"] = valid
        n = jnp.maximum(jnp.sum(valid), 1.0)
        metrics = {
            "tie_fraction": 1.0 - jnp.mean(valid),
            "score_margin": jnp.sum((high - low) * valid) / n,
        }
        return out, metrics, objective_state

    def loss_fn(params, frozen, batch, rng):
        del rng
        n = batch["chosen_tokens"].shape[0]
        rows = {
            k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in _ROW_FIELDS
        }
        totals, token_logps, logits = _sequence_logps(graphdef, params, rows)
        chosen, rejected = totals[:n], totals[n:]
        mask = rows["completion_mask"].astype(jnp.float32)
        lengths = jnp.sum(mask, axis=-1)
        valid = batch["valid"]
        losses, rc, rr = combined_dpo_loss(
            chosen, rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"],
            loss_types=types, weights=weights, beta=beta,
            sft_nll=-chosen / jnp.maximum(lengths[:n], 1.0),
            label_smoothing=float(o.label_smoothing),
            chosen_lengths=lengths[:n], rejected_lengths=lengths[n:],
            f_divergence=o.f_divergence, f_alpha=float(o.f_alpha),
        )  # fmt: skip
        metrics = pair_metrics(valid, rc, rr, chosen, rejected)
        ref_logits = jax.lax.stop_gradient(
            policy_token_logps(graphdef, frozen["reference"], rows, 1.0)[1]
        )
        metrics["kl_ref"] = kl_ref_metric(logits, ref_logits, mask, jnp.concatenate([valid, valid]))
        return jnp.sum(losses * valid), (jnp.sum(valid), metrics)

    return Objective(
        "online_dpo",
        loss_fn,
        batch_kind="rollouts",
        frozen_models=("reference",),
        prepare_fn=prepare_fn,
        prepare_forwards=2.0 / group,  # the reference over 2 of each prompt's G rows
    )
