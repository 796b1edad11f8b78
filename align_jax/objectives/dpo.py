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
import ml_collections

from align_jax.losses import (
    DPO_LOSS_TYPES,
    combined_dpo_loss,
    ld_logps,
    soft_label_dpo_loss,
    wpo_weights,
)
from align_jax.models import sequence_logprobs
from align_jax.objectives.base import Objective, register
from align_jax.objectives.common import kl_ref_metric, pair_metrics, pair_rows, reference_keys

_TYPES = DPO_LOSS_TYPES + ("sft",)


def defaults() -> ml_collections.ConfigDict:
    """DPO's `config.objective` keys and their defaults."""
    o = ml_collections.ConfigDict()
    o.name = "dpo"  # the objective this config trains
    # One of align_jax.losses.DPO_LOSS_TYPES or sft (chosen NLL), or several comma-joined.
    o.loss_type = "sigmoid"
    o.beta = 0.1  # β: implicit reward β·(log π − log π_ref); larger stays nearer the reference
    # ε: label noise for sigmoid (conservative DPO), robust, exo_pair, aot*; others ignore it.
    o.label_smoothing = 0.0
    o.loss_weights = ""  # comma list, one per comma-joined loss_type; "" = all 1
    o.soft_labels = False  # use the pairs' `label` field as soft preference q
    # The divergence to the reference the loss regularises with: reverse_kl (plain DPO) |
    # forward_kl | js_divergence | alpha_divergence.
    o.f_divergence = "reverse_kl"
    o.f_alpha = 0.5  # α of alpha_divergence, in (0, 1]
    o.wpo = False  # WPO pair weights (arXiv 2406.11827)
    o.ld_alpha = 1.0  # < 1: LD-DPO length desensitisation (arXiv 2409.06411)
    o.update(reference_keys())
    return o


def parse_loss_types(objective_cfg) -> tuple[tuple[str, ...], tuple[float, ...]]:
    types = tuple(t.strip() for t in objective_cfg.loss_type.split(",") if t.strip())
    bad = [t for t in types if t not in _TYPES]
    if bad or not types:
        raise ValueError(
            f"config.objective.loss_type '{objective_cfg.loss_type}' is not valid for objective "
            f"'{objective_cfg.name}'; valid loss types (comma-join several): {list(_TYPES)}"
        )
    weights = objective_cfg.loss_weights
    if not weights:
        return types, (1.0,) * len(types)
    try:
        values = tuple(float(w) for w in str(weights).split(","))
    except ValueError:
        raise ValueError(
            f"config.objective.loss_weights '{weights}'; expected comma-separated numbers"
        ) from None
    if len(values) != len(types):
        raise ValueError(
            f"config.objective.loss_weights '{weights}' has {len(values)} weights for "
            f"{len(types)} loss types"
        )
    return types, values


@register("dpo", loss_types=None, defaults=defaults)
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
        valid = batch["valid"]
        rows = pair_rows(batch)
        token_logps, mask, logits = sequence_logprobs(graphdef, params, *rows)
        chosen, rejected = sums(token_logps, mask, n)
        kl_ref = None
        if "ref_chosen_logps" in batch:
            ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            ref_token_logps, _, ref_logits = jax.lax.stop_gradient(
                sequence_logprobs(graphdef, frozen["reference"], *rows)
            )
            ref_chosen, ref_rejected = sums(ref_token_logps, mask, n)
            kl_ref = kl_ref_metric(logits, ref_logits, mask, jnp.concatenate([valid, valid]))
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
        metrics = pair_metrics(valid, rc, rr, chosen, rejected)
        if kl_ref is not None:
            metrics["kl_ref"] = kl_ref
        return jnp.sum(losses * valid), (jnp.sum(valid), metrics)

    def reference_logps_fn(params, batch):
        token_logps, mask, _ = sequence_logprobs(graphdef, params, *pair_rows(batch))
        return sums(token_logps, mask, batch["chosen_tokens"].shape[0])

    return Objective(
        "dpo", loss_fn, batch_kind="pairs", frozen_models=("reference",),
        reference_logps_fn=reference_logps_fn,
    )  # fmt: skip
