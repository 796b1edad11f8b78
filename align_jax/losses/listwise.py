"""Soft and listwise preferences: the generalised preference objective.

- Soft labels: `q ∈ [0, 1]`, the probability that the chosen completion beats the rejected one;
  q = 1 is DPO exactly, q = 1 − ε is conservative DPO.
- Scores: K completions of one prompt with continuous scores `s_k` (a reward model, a judge)
  give soft pairwise labels `q_ij = σ((s_i − s_j)/τ)`.
- Rankings: Plackett–Luce over K ranked completions (DPO paper, arXiv 2305.18290, App. A.3;
  LiPO, arXiv 2402.01878). K = 2 is DPO's sigmoid loss.

Log-probs are summed over completion tokens. Per-prompt losses [B]; the caller reduces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses.dpo import soft_logistic_loss

# Stand-in for −inf on masked-out list entries: exp() of it is exactly 0 in float32 and,
# unlike −inf, it keeps gradients of logsumexp finite.
_MASKED = -1e9


def soft_label_dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    labels: jax.Array,
    *,
    beta: float = 0.1,
):
    """DPO with soft labels (arXiv 2305.18290; soft-label DPO as in cDPO and arXiv 2402.01878).

    `−q log σ(βΔ) − (1−q) log σ(−βΔ)`, `Δ = (Lc − Lc_ref) − (Lr − Lr_ref)`, `q = labels` [B]
    in [0, 1]. All inputs [B]. q = 1 gives `dpo_loss(loss_type="sigmoid")`; q = 1 − ε gives its
    `label_smoothing=ε`; q = ½ makes the loss even in Δ.
    Returns `(losses_b, chosen_rewards_b, rejected_rewards_b)`, rewards `β ρ` (stop-gradient).
    """
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    z = beta * (chosen_logratios - rejected_logratios)
    return (
        soft_logistic_loss(z, jnp.asarray(labels, z.dtype)),
        jax.lax.stop_gradient(beta * chosen_logratios),
        jax.lax.stop_gradient(beta * rejected_logratios),
    )


def scores_to_soft_labels(scores_bk: jax.Array, *, tau: float = 1.0) -> jax.Array:
    """Soft pairwise labels from scores: `q_bij = σ((s_bi − s_bj) / τ)`, shape [B, K, K].

    `q_ij` is the probability that completion i beats completion j under a Bradley–Terry model
    of the scores with temperature τ; `q_ij + q_ji = 1`, `q_ii = ½`. τ → 0 gives hard labels.
    """
    return jax.nn.sigmoid((scores_bk[:, :, None] - scores_bk[:, None, :]) / tau)


def soft_pairwise_loss(
    logps_bk: jax.Array,
    ref_logps_bk: jax.Array,
    scores_bk: jax.Array,
    *,
    beta: float = 0.1,
    tau: float = 1.0,
    mask_bk: jax.Array | None = None,
) -> jax.Array:
    """Soft-label DPO over every pair of K scored completions of a prompt, averaged, [B].

    For each unordered pair i < j of valid completions: `−q_ij log σ(β(ρ_i − ρ_j)) −
    (1 − q_ij) log σ(−β(ρ_i − ρ_j))`, `ρ_k = L_k − L_k_ref`, `q_ij = σ((s_i − s_j)/τ)`
    (`scores_to_soft_labels`). The loss is symmetric in (i, j), so each pair counts once;
    the mean over a prompt's valid pairs keeps the scale of one DPO pair (K = 2 is exactly
    `soft_label_dpo_loss`). `mask_bk` marks real completions (default all); a prompt with
    fewer than two gets 0.
    """
    batch, k = logps_bk.shape
    if mask_bk is None:
        mask_bk = jnp.ones((batch, k), bool)
    z = beta * (logps_bk - ref_logps_bk)
    z_ij = z[:, :, None] - z[:, None, :]
    q_ij = scores_to_soft_labels(scores_bk, tau=tau)
    pair_losses = soft_logistic_loss(z_ij, q_ij)
    upper = jnp.triu(jnp.ones((k, k), bool), k=1)
    valid = upper[None] & mask_bk[:, :, None] & mask_bk[:, None, :]
    valid = valid.astype(pair_losses.dtype)
    return jnp.sum(pair_losses * valid, (1, 2)) / jnp.maximum(jnp.sum(valid, (1, 2)), 1.0)


def plackett_luce_loss(
    logps_bk: jax.Array,
    ref_logps_bk: jax.Array,
    *,
    beta: float = 0.1,
    mask_bk: jax.Array | None = None,
):
    """Listwise Plackett–Luce DPO loss over K ranked completions (arXiv 2305.18290 App. A.3).

    Completions are in ranked order, best first, along axis 1. With implicit rewards
    `u_k = β (L_k − L_k_ref)`: `ℓ = −Σ_k [u_k − logsumexp(u_k, …, u_K)]`, the negative
    log-likelihood of the ranking (LiPO, arXiv 2402.01878, calls it list MLE). K = 2 equals
    `dpo_loss(loss_type="sigmoid")`. `mask_bk` drops entries (lists shorter than K, ragged
    groups): a masked entry is removed from the ranking, the others keep their order.

    Returns `(losses_b, rewards_bk)`, rewards `u` (stop-gradient).
    """
    rewards = beta * (logps_bk - ref_logps_bk)
    if mask_bk is None:
        mask_bk = jnp.ones(rewards.shape, bool)
    u = jnp.where(mask_bk, rewards, _MASKED)
    # logsumexp over the entries ranked at or below k, by a reversed cumulative logsumexp.
    tail_lse = jax.lax.cumlogsumexp(u, axis=1, reverse=True)
    terms = jnp.where(mask_bk, u - tail_lse, 0.0)
    return -jnp.sum(terms, axis=1), jax.lax.stop_gradient(rewards)
