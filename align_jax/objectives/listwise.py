"""Listwise preference optimisation over K ranked or scored responses per prompt.

Batch: the listwise pipeline's rows (align_jax/data/listwise.py): `tokens`, `mask`,
`segment_ids` [B, K, L] in ranked order (best first), `list_mask` [B, K], `ranks` [B, K],
optional `scores` [B, K], `valid` [B]. The B·K rows go through the policy as one
concatenated batch; with implicit rewards `u_k = β (L_k − L_k_ref)`:

- `plackett_luce`: the ranking's negative log-likelihood `−Σ_k [u_k − logsumexp(u_k..u_K)]`
  (DPO paper arXiv 2305.18290 App. A.3; LiPO arXiv 2402.01878). K = 2 is DPO's sigmoid loss.
- `soft_pairwise`: soft-label DPO over every pair, `q_ij = σ((s_i − s_j)/τ)` from the
  records' `scores` (τ = `config.objective.score_tau`); needs `scores` on every record.

The loss is summed over valid lists and divided once by their number.

Reference: the frozen argument of the step (its log-probs computed in the step), or
`ref_logps` [B, K] in the batch; `reference_logps_fn` returns those [B, K] arrays. The
loop's precompute pass caches two log-probs per record (a pair), so
`config.objective.precompute_ref_logps` is refused here: the reference runs in the step.

Metrics (means over valid lists): `ranking_accuracy` (the fraction of pairs i < j of real,
differently ranked responses with u_i > u_j), `best_reward` / `worst_reward` (u of the first
and the last real response) and their `reward_margin`, `best_logps` / `worst_logps`, and
`kl_ref`: the exact next-token KL(π‖π_ref) averaged over the response tokens of every real
response, as the DPO objective reports it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses import plackett_luce_loss, soft_pairwise_loss, token_logprobs
from align_jax.models import apply_model
from align_jax.objectives import Objective, register
from align_jax.objectives.dpo import token_kl

LOSS_TYPES = ("plackett_luce", "soft_pairwise")


def list_token_logps(graphdef, params, batch):
    """Per-token log-probs [B·K, L-1] of every response row, their masks, and the logits."""
    b, k, length = batch["tokens"].shape
    tokens = batch["tokens"].reshape(b * k, length)
    segments = batch["segment_ids"].reshape(b * k, length)
    mask = batch["mask"].reshape(b * k, length)[:, 1:]
    logits = apply_model(graphdef, params, tokens[:, :-1], None, segments[:, :-1])
    return token_logprobs(logits, tokens[:, 1:]) * mask, mask, logits


def list_logps(graphdef, params, batch):
    """Summed response log-probs [B, K]."""
    b, k, _ = batch["tokens"].shape
    token_logps, _, _ = list_token_logps(graphdef, params, batch)
    return jnp.sum(token_logps, axis=-1).reshape(b, k)


@register("listwise", loss_types=LOSS_TYPES)
def build(config, graphdef) -> Objective:
    o = config.objective
    beta, tau = float(o.beta), float(o.score_tau)
    if o.precompute_ref_logps:
        raise ValueError(
            "config.objective.precompute_ref_logps=True is not supported by objective "
            "'listwise' (the precompute cache holds two log-probs per record, a list has K); "
            "leave it False: the reference runs in the train step"
        )
    if o.loss_type == "soft_pairwise" and not tau > 0:
        raise ValueError(f"config.objective.score_tau={tau}; expected a number > 0")

    def loss_fn(params, frozen, batch, rng):
        del rng
        b, k, _ = batch["tokens"].shape
        token_logps, mask, logits = list_token_logps(graphdef, params, batch)
        logps = jnp.sum(token_logps, axis=-1).reshape(b, k)
        kl = None
        if "ref_logps" in batch:
            ref_logps = batch["ref_logps"]
        else:
            ref_token_logps, _, ref_logits = jax.lax.stop_gradient(
                list_token_logps(graphdef, frozen, batch)
            )
            ref_logps = jnp.sum(ref_token_logps, axis=-1).reshape(b, k)
            kl = token_kl(logits, ref_logits)
        list_mask = batch["list_mask"] > 0
        if o.loss_type == "plackett_luce":
            losses, rewards = plackett_luce_loss(logps, ref_logps, beta=beta, mask_bk=list_mask)
        else:
            if "scores" not in batch:
                raise ValueError(
                    "loss_type 'soft_pairwise' needs 'scores' on every listwise record "
                    "(these data have records with 'ranks' only); use 'plackett_luce'"
                )
            losses = soft_pairwise_loss(
                logps, ref_logps, batch["scores"], beta=beta, tau=tau, mask_bk=list_mask
            )
            rewards = jax.lax.stop_gradient(beta * (logps - ref_logps))

        valid = batch["valid"]
        count = jnp.sum(valid)
        mean = lambda x: (jnp.sum(x * valid), count)  # noqa: E731
        # Pairs i < j of real responses with a strictly better rank for i (ties carry no order).
        ranks = batch["ranks"]
        ordered = (
            jnp.triu(jnp.ones((k, k), bool), k=1)[None]
            & list_mask[:, :, None]
            & list_mask[:, None, :]
            & (ranks[:, :, None] < ranks[:, None, :])
        )
        ordered = ordered.astype(jnp.float32) * valid[:, None, None]
        correct = (rewards[:, :, None] > rewards[:, None, :]).astype(jnp.float32)
        last = jnp.maximum(jnp.sum(list_mask, axis=1) - 1, 0)
        pick = lambda x: jnp.take_along_axis(x, last[:, None], axis=1)[:, 0]  # noqa: E731
        metrics = {
            "ranking_accuracy": (jnp.sum(correct * ordered), jnp.sum(ordered)),
            "best_reward": mean(rewards[:, 0]),
            "worst_reward": mean(pick(rewards)),
            "reward_margin": mean(rewards[:, 0] - pick(rewards)),
            "best_logps": mean(logps[:, 0]),
            "worst_logps": mean(pick(logps)),
        }
        if kl is not None:
            row_valid = (list_mask * valid[:, None]).reshape(b * k, 1)
            metrics["kl_ref"] = (jnp.sum(kl * mask * row_valid), jnp.sum(mask * row_valid))
        return jnp.sum(losses * valid), (count, metrics)

    return Objective(
        name="listwise",
        loss_fn=loss_fn,
        batch_kind="lists",
        tokens_per_batch=lambda batch: int(batch["tokens"].size),
        needs_reference=True,
        reference_logps_fn=lambda params, batch: list_logps(graphdef, params, batch),
    )
