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

Reference: the frozen argument of the step, its log-probs computed in the step. There is no
`config.objective.precompute_ref_logps` here: the loop's precompute pass caches two
log-probs per record (a pair), and a list has K.

Metrics (means over valid lists): `ranking_accuracy` (the fraction of pairs i < j of real,
differently ranked responses with u_i > u_j), `best_reward` / `worst_reward` (u of the first
and the last real response) and their `reward_margin`, `best_logps` / `worst_logps`, and
`kl_ref`: the exact next-token KL(π‖π_ref) averaged over the response tokens of every real
response, as the DPO objective reports it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from align_jax.losses import plackett_luce_loss, soft_pairwise_loss
from align_jax.models import sequence_logprobs
from align_jax.objectives.base import Objective, register
from align_jax.objectives.common import kl_ref_metric

LOSS_TYPES = ("plackett_luce", "soft_pairwise")


def defaults() -> ml_collections.ConfigDict:
    """The listwise objective's `config.objective` keys and their defaults (`score_tau` is
    soft_pairwise's τ; `reference_from` "" means config.init_from)."""
    return ml_collections.ConfigDict(
        {
            "name": "listwise",  # the objective this config trains
            "loss_type": "plackett_luce",  # plackett_luce (ranks) | soft_pairwise (scores)
            "beta": 0.1,  # β of the implicit rewards u_k = β (L_k − L_k_ref)
            "score_tau": 1.0,  # soft_pairwise: τ in q_ij = σ((s_i − s_j) / τ); > 0
            "reference_from": "",  # the frozen reference's run or checkpoint; "" = config.init_from
        }
    )


@register("listwise", loss_types=LOSS_TYPES, defaults=defaults)
def build(config, graphdef) -> Objective:
    o = config.objective
    beta, tau = float(o.beta), float(o.score_tau)
    if o.loss_type == "soft_pairwise" and not tau > 0:
        raise ValueError(f"config.objective.score_tau={tau}; expected a number > 0")

    def loss_fn(params, frozen, batch, rng):
        del rng
        b, k, length = batch["tokens"].shape
        rows = [batch[f].reshape(b * k, length) for f in ("tokens", "segment_ids", "mask")]
        token_logps, mask, logits = sequence_logprobs(graphdef, params, *rows)
        ref_token_logps, _, ref_logits = jax.lax.stop_gradient(
            sequence_logprobs(graphdef, frozen["reference"], *rows)
        )
        logps = jnp.sum(token_logps, axis=-1).reshape(b, k)
        ref_logps = jnp.sum(ref_token_logps, axis=-1).reshape(b, k)
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
        row_valid = (list_mask * valid[:, None]).reshape(b * k)
        metrics["kl_ref"] = kl_ref_metric(logits, ref_logits, mask, row_valid)
        return jnp.sum(losses * valid), (count, metrics)

    return Objective("listwise", loss_fn, batch_kind="lists", frozen_models=("reference",))
