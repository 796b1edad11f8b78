"""Offline preference optimisation on pairs: the DPO family (DPO, arXiv 2305.18290).

Batch: the pair pipeline's rows (align_jax/data/pairs.py). Chosen and rejected go through
the policy as one concatenated batch of 2B rows. The reference model is either the frozen
argument of the train step (its log-probs computed in the step), or absent, with
`ref_chosen_logps` / `ref_rejected_logps` precomputed once into the batch
(`config.objective.precompute_ref_logps`), which frees the reference's memory during
training.

`config.objective.loss_type` is one of `align_jax.losses.DPO_LOSS_TYPES`, or several joined
by commas (`"sigmoid,bco_pair,sft"`) with `config.objective.loss_weights` ("0.8,0.2,1.0");
`sft` is the chosen completion's token-mean NLL. Options: `soft_labels` (the pairs'
`label` field as q, arXiv 2305.18290 soft-label form), `f_divergence`, `wpo` weighting
(2406.11827), `ld_alpha` < 1 (LD-DPO, 2409.06411).

Metrics (means over valid pairs): reward accuracy and margin, chosen/rejected implicit
rewards β·ρ and summed log-probs, and (reference in the step) `kl_ref`: the exact
next-token KL(π‖π_ref) over the vocabulary, averaged over completion tokens of both sides,
i.e. along the dataset's prefixes (with precomputed reference log-probs there are no
reference logits, so no `kl_ref`).
AOT's batch sort runs within each micro-batch under gradient accumulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses import (
    DPO_LOSS_TYPES,
    combined_dpo_loss,
    ld_logps,
    soft_label_dpo_loss,
    token_logprobs,
    wpo_weights,
)
from align_jax.models import apply_model
from align_jax.objectives import Objective, register

_TYPES = DPO_LOSS_TYPES + ("sft",)


def pair_token_logps(graphdef, params, batch):
    """Per-token log-probs [2B, L-1] and completion masks of chosen then rejected rows."""
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]])
    segments = jnp.concatenate([batch["chosen_segment_ids"], batch["rejected_segment_ids"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])[:, 1:]
    logits = apply_model(graphdef, params, tokens[:, :-1], None, segments[:, :-1])
    return token_logprobs(logits, tokens[:, 1:]) * mask, mask, logits


def token_kl(logits, ref_logits):
    """KL(π(·|prefix) ‖ π_ref(·|prefix)) per position [B, L], exact over the vocabulary."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ref_logp = jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)


def parse_loss_types(objective_cfg) -> tuple[tuple[str, ...], tuple[float, ...]]:
    types = tuple(t.strip() for t in objective_cfg.loss_type.split(",") if t.strip())
    bad = [t for t in types if t not in _TYPES]
    if bad or not types:
        raise ValueError(
            f"config.objective.loss_type '{objective_cfg.loss_type}' is not valid for objective "
            f"'dpo'; valid loss types (comma-join several): {list(_TYPES)}"
        )
    weights = objective_cfg.loss_weights
    if not weights:
        return types, (1.0,) * len(types)
    values = tuple(float(w) for w in str(weights).split(","))
    if len(values) != len(types):
        raise ValueError(
            f"config.objective.loss_weights '{weights}' has {len(values)} weights for "
            f"{len(types)} loss types"
        )
    return types, values


@register("dpo", loss_types=None)
def build(config, graphdef) -> Objective:
    o = config.objective
    types, weights = parse_loss_types(o)
    beta = float(o.beta)

    def sums(token_logps, mask, n):
        if o.ld_alpha < 1.0:
            return ld_logps(token_logps[:n], mask[:n], token_logps[n:], mask[n:], alpha=o.ld_alpha)
        total = jnp.sum(token_logps, axis=-1)
        return total[:n], total[n:]

    def loss_fn(params, frozen, batch, rng):
        del rng
        n = batch["chosen_tokens"].shape[0]
        token_logps, mask, logits = pair_token_logps(graphdef, params, batch)
        chosen, rejected = sums(token_logps, mask, n)
        kl = None
        if "ref_chosen_logps" in batch:
            ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            ref_token_logps, _, ref_logits = jax.lax.stop_gradient(
                pair_token_logps(graphdef, frozen, batch)
            )
            ref_chosen, ref_rejected = sums(ref_token_logps, mask, n)
            kl = token_kl(logits, ref_logits)
        lengths = jnp.sum(mask, axis=-1)
        if o.soft_labels:
            losses, rc, rr = soft_label_dpo_loss(
                chosen, rejected, ref_chosen, ref_rejected, batch["label"], beta=beta
            )
        else:
            sft_nll = -jnp.sum(token_logps[:n], -1) / jnp.maximum(lengths[:n], 1.0)
            losses, rc, rr = combined_dpo_loss(
                chosen, rejected, ref_chosen, ref_rejected,
                loss_types=types, weights=weights, sft_nll=sft_nll, beta=beta,
                label_smoothing=float(o.label_smoothing),
                chosen_lengths=lengths[:n], rejected_lengths=lengths[n:],
                f_divergence=o.f_divergence, f_alpha=float(o.f_alpha),
            )  # fmt: skip
        if o.wpo:
            losses = losses * wpo_weights(
                token_logps[:n], mask[:n], token_logps[n:], mask[n:],
                chosen_logits_btv=logits[:n], rejected_logits_btv=logits[n:],
            )  # fmt: skip
        valid = batch["valid"]
        count = jnp.sum(valid)
        mean = lambda x: (jnp.sum(x * valid), count)  # noqa: E731
        metrics = {
            "reward_accuracy": mean((rc > rr).astype(jnp.float32)),
            "reward_margin": mean(rc - rr),
            "chosen_reward": mean(rc),
            "rejected_reward": mean(rr),
            "chosen_logps": mean(chosen),
            "rejected_logps": mean(rejected),
        }
        if kl is not None:
            pair_valid = jnp.concatenate([valid, valid])[:, None]
            metrics["kl_ref"] = (jnp.sum(kl * mask * pair_valid), jnp.sum(mask * pair_valid))
        return jnp.sum(losses * valid), (count, metrics)

    return Objective(
        name="dpo",
        loss_fn=loss_fn,
        batch_kind="pairs",
        tokens_per_batch=lambda batch: int(batch["chosen_tokens"].size * 2),
        needs_reference=True,
        reference_logps_fn=lambda params, batch: sums(
            *pair_token_logps(graphdef, params, batch)[:2], batch["chosen_tokens"].shape[0]
        ),
    )
