"""Reference-free pairwise losses (SimPO, CPO, ORPO) and the unpaired KTO loss.

Inputs are summed completion log-probs [B] (`chosen_logps` = Σ_t log π(y_c,t | x, y_c,<t)),
with completion token counts where a loss is length-normalised. Every function returns
per-example losses first; the caller reduces (TRL takes the mean). Rewards are what TRL logs.

The NLL term of CPO and ORPO is an argument, not computed here (these functions never see
logits): `chosen_nll` is broadcast to [B]. TRL's NLL is the token-mean cross-entropy over all
chosen tokens of the batch, one scalar; pass that scalar to reproduce TRL exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from align_jax.losses.dpo import soft_logistic_loss

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def _per_token(logps: jax.Array, lengths: jax.Array) -> jax.Array:
    return logps / jnp.maximum(jnp.asarray(lengths, logps.dtype), 1.0)


def _nll_term(chosen_nll, like: jax.Array) -> jax.Array:
    if chosen_nll is None:
        return jnp.zeros_like(like)
    return jnp.broadcast_to(jnp.asarray(chosen_nll, like.dtype), like.shape)


def simpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
):
    """SimPO: reference-free, length-normalised margin loss (arXiv 2405.14734).

    `z = β (Lc/|yc| − Lr/|yr|) − γ`, loss `−(1−ε) log σ(z) − ε log σ(−z)` (ε = 0 in the paper).
    Shapes [B]; lengths are completion token counts (clamped to ≥ 1).
    Defaults β = 2, γ = 1 (γ/β = 0.5) are the SimPO repository's base-model setting. TRL's
    `CPOTrainer(loss_type="simpo")` computes the same `z` (its `simpo_gamma` is γ) but defaults
    to β = 0.1, γ = 0.5. Returns `(losses_b, chosen_rewards_b, rejected_rewards_b)` with rewards
    `β L/|y|` (stop-gradient), as TRL logs them.
    """
    chosen_avg = _per_token(chosen_logps, chosen_lengths)
    rejected_avg = _per_token(rejected_logps, rejected_lengths)
    z = beta * (chosen_avg - rejected_avg) - gamma
    losses = soft_logistic_loss(z, 1.0 - label_smoothing)
    return (
        losses,
        jax.lax.stop_gradient(beta * chosen_avg),
        jax.lax.stop_gradient(beta * rejected_avg),
    )


def cpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_nll: jax.Array | float | None = None,
    beta: float = 0.1,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
):
    """Contrastive Preference Optimization (arXiv 2401.08417).

    `−(1−ε) log σ(β(Lc − Lr)) − ε log σ(−β(Lc − Lr)) + α · NLL(chosen)`, shapes [B]: DPO with
    a uniform reference plus behaviour cloning on the chosen completion. `chosen_nll=None`
    leaves the NLL term out. Defaults β = 0.1, α = 1 as the paper and TRL's `cpo_alpha`.
    Returns `(losses_b, chosen_rewards_b, rejected_rewards_b)`, rewards `β L` (stop-gradient).
    """
    z = beta * (chosen_logps - rejected_logps)
    losses = soft_logistic_loss(z, 1.0 - label_smoothing)
    losses = losses + alpha * _nll_term(chosen_nll, losses)
    return (
        losses,
        jax.lax.stop_gradient(beta * chosen_logps),
        jax.lax.stop_gradient(beta * rejected_logps),
    )


def _log1m_exp(x: jax.Array) -> jax.Array:
    """log(1 − e^x) for x < 0, accurate at both ends (Mächler 2012)."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def orpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    chosen_nll: jax.Array | float | None = None,
    beta: float = 0.1,
):
    """Odds Ratio Preference Optimization (arXiv 2403.07691).

    `NLL(chosen) − λ log σ(log odds_c − log odds_r)`, `odds = p / (1 − p)`, with `p = exp(L/|y|)`
    the geometric-mean per-token probability of the completion. λ is `beta` (TRL's name; paper
    default 0.1). Shapes [B]; lengths are completion token counts (clamped to ≥ 1); every
    `chosen_logps`/`rejected_logps` must be < 0. `chosen_nll=None` leaves the NLL term out.
    Returns `(losses_b, chosen_rewards_b, rejected_rewards_b)`, rewards `λ L/|y|` (as TRL).
    """
    chosen_avg = _per_token(chosen_logps, chosen_lengths)
    rejected_avg = _per_token(rejected_logps, rejected_lengths)
    log_odds = (chosen_avg - rejected_avg) - (_log1m_exp(chosen_avg) - _log1m_exp(rejected_avg))
    losses = _nll_term(chosen_nll, log_odds) - beta * jax.nn.log_sigmoid(log_odds)
    return (
        losses,
        jax.lax.stop_gradient(beta * chosen_avg),
        jax.lax.stop_gradient(beta * rejected_avg),
    )


def kto_reference_point(kl_logps: jax.Array, ref_kl_logps: jax.Array) -> jax.Array:
    """KTO's reference point `z0 = max(0, mean_batch(log π(y'|x) − log π_ref(y'|x)))`, detached.

    `kl_logps`, `ref_kl_logps` [B]: summed log-probs of mismatched pairs (each prompt with
    another example's completion), a biased but cheap estimate of KL(π || π_ref) (arXiv
    2402.01306, as TRL). On several hosts with global arrays the mean is already global; TRL's
    per-process mean followed by a mean over processes is the same for equal shard sizes.
    """
    return jax.lax.stop_gradient(jnp.maximum(jnp.mean(kl_logps - ref_kl_logps), 0.0))


def kto_loss(
    logps: jax.Array,
    ref_logps: jax.Array,
    desirable: jax.Array,
    *,
    kl_logps: jax.Array | None = None,
    ref_kl_logps: jax.Array | None = None,
    reference_point: jax.Array | float | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
):
    """Kahneman–Tversky Optimization on unpaired examples (arXiv 2402.01306).

    `logps`, `ref_logps` [B] summed completion log-probs; `desirable` [B] bool (thumbs up).
    With `ρ = logps − ref_logps` and the reference point `z0` (`kto_reference_point` of the
    mismatched-pair log-probs, or `reference_point=` given directly, e.g. gathered elsewhere):

    - desirable: `w_d (1 − σ(β(ρ − z0)))`
    - undesirable: `w_u (1 − σ(β(z0 − ρ)))`

    `loss_type="apo_zero_unpaired"` (APO, arXiv 2408.06266) is the same with z0 = 0, as TRL
    (which skips the KL pass for it); KL arguments are then ignored. TRL concatenates the
    desirable then the undesirable losses and takes the mean; the mean of `losses_b` here is
    that same number.

    Returns `(losses_b, rewards_b, z0)` with rewards `β ρ` (stop-gradient).
    """
    if loss_type not in KTO_LOSS_TYPES:
        raise ValueError(f"Unknown KTO loss_type {loss_type!r}; valid: {KTO_LOSS_TYPES}")
    if loss_type == "apo_zero_unpaired":
        z0 = jnp.zeros((), logps.dtype)
    elif reference_point is not None:
        z0 = jax.lax.stop_gradient(jnp.asarray(reference_point, logps.dtype))
    elif kl_logps is not None and ref_kl_logps is not None:
        z0 = kto_reference_point(kl_logps, ref_kl_logps)
    else:
        raise ValueError("kto_loss needs kl_logps= and ref_kl_logps=, or reference_point=")
    logratios = logps - ref_logps
    desirable_losses = 1.0 - jax.nn.sigmoid(beta * (logratios - z0))
    undesirable_losses = 1.0 - jax.nn.sigmoid(beta * (z0 - logratios))
    losses = jnp.where(
        desirable,
        desirable_weight * desirable_losses,
        undesirable_weight * undesirable_losses,
    )
    return losses, jax.lax.stop_gradient(beta * logratios), z0
