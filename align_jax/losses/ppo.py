"""PPO for language models (arXiv 1707.06347), as pure functions over arrays.

Shapes: `_b` per sequence, `_bt` per completion token, `mask_bt` marks completion tokens
(right-padded: a sequence's completion tokens come before its padding). Hyperparameters are
Python floats (static under jit). Names and defaults follow TRL; OpenRLHF and verl differences
are noted where they exist. docs/objectives.md ("RL pieces") has every formula.

- `kl_penalty`: the k1 / k2 / k3 estimators of KL(π || π_ref) from sampled tokens
- `per_token_rewards`: RLHF rewards, `−β_kl · kl_t` plus the score at the last token
- `gae`: generalised advantage estimation (arXiv 1506.02438) as a reverse `lax.scan`
- `masked_whiten`: whitening over masked-in entries
- `ppo_policy_loss`, `ppo_value_loss`, `ppo_loss`: the clipped losses
- `adaptive_kl_coef`: the adaptive KL controller (Ziegler et al., arXiv 1909.08593)

The GRPO family (align_jax.losses.grpo, align_jax.losses.advantages) reuses the estimators,
the per-token rewards, GAE and whitening (REINFORCE++).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses.common import masked_mean

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logps: jax.Array, ref_logps: jax.Array, *, estimator: str = "k1") -> jax.Array:
    """Per-token estimate of KL(π || π_ref) from sampled tokens (Schulman, 2020), any shape.

    - `k1 = log π − log π_ref` (unbiased, can be negative)
    - `k2 = ½ (log π − log π_ref)²`
    - `k3 = e^x − 1 − x`, `x = log π_ref − log π` (unbiased, ≥ 0; GRPO's KL term)

    As TRL and OpenRLHF, unclamped. verl's `low_var_kl` is k3 with x clamped to ±20 and the
    result to ±10; clamp the inputs yourself to reproduce it.
    """
    log_ratio = logps - ref_logps
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    if estimator == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"Unknown KL estimator {estimator!r}; valid: {KL_ESTIMATORS}")


def _last_token(mask_bt: jax.Array) -> jax.Array:
    """One-hot [B, T] of each row's last masked-in token (all False for an empty row)."""
    mask = mask_bt.astype(jnp.int32)
    remaining = jnp.flip(jnp.cumsum(jnp.flip(mask, 1), 1), 1)  # masked-in tokens at t or later
    return (mask == 1) & (remaining == 1)


def per_token_rewards(
    scores_b: jax.Array,
    logps_bt: jax.Array,
    ref_logps_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    kl_coef: float = 0.05,
    kl_estimator: str = "k1",
    has_eos_b: jax.Array | None = None,
    missing_eos_penalty: float | None = None,
):
    """RLHF per-token rewards: `r_t = −β_kl · kl_t`, plus the sequence score at the last token.

    `scores_b` [B] from the reward model; log-probs [B, T] of the sampled tokens under the
    rollout policy and the reference. With `missing_eos_penalty`, sequences whose
    `has_eos_b` is False get `score − penalty` (TRL's `missing_eos_penalty`). Defaults
    `kl_coef=0.05`, k1: TRL's `PPOConfig`. Rewards are 0 outside `mask_bt`.

    The score goes on the last completion token, as OpenRLHF does; TRL's PPOTrainer puts it
    one position later (the first padding position, itself inside TRL's value mask).
    Returns `(rewards_bt, kl_bt)`.
    """
    # where, not multiply: padding log-probs may be anything, and inf * 0 is nan
    kl = jnp.where(mask_bt, kl_penalty(logps_bt, ref_logps_bt, estimator=kl_estimator), 0.0)
    scores = scores_b.astype(logps_bt.dtype)
    if missing_eos_penalty is not None:
        if has_eos_b is None:
            raise ValueError("missing_eos_penalty needs has_eos_b=")
        scores = jnp.where(has_eos_b, scores, scores - missing_eos_penalty)
    rewards = -kl_coef * kl + jnp.where(_last_token(mask_bt), scores[:, None], 0.0)
    return rewards, kl


def gae(
    rewards_bt: jax.Array,
    values_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
):
    """Generalised advantage estimation (arXiv 1506.02438) as a reverse `lax.scan` over time.

    `δ_t = r_t + γ V_{t+1} − V_t`, `A_t = δ_t + γλ A_{t+1}`, returns `R_t = A_t + V_t`.
    Rewards and values outside `mask_bt` count as 0, so the value after a sequence's last
    token is 0 (the episode ends there), as TRL and OpenRLHF. Defaults γ = 1, λ = 0.95 (TRL).
    With γ = λ = 1, `A_t = Σ_{s≥t} r_s − V_t`. Returns `(advantages_bt, returns_bt)`.
    """
    mask = mask_bt.astype(rewards_bt.dtype)
    rewards = jnp.where(mask_bt, rewards_bt, 0.0)
    values = jnp.where(mask_bt, values_bt, 0.0)
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
    deltas = rewards + gamma * next_values - values

    def backward_step(next_advantage_b, delta_b):
        advantage_b = delta_b + gamma * lam * next_advantage_b
        return advantage_b, advantage_b

    _, advantages_tb = jax.lax.scan(
        backward_step, jnp.zeros(deltas.shape[:1], deltas.dtype), deltas.T, reverse=True
    )
    advantages = advantages_tb.T * mask
    return advantages, advantages + values


def masked_whiten(
    x: jax.Array, mask: jax.Array, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    """`(x − mean) / sqrt(var + eps)` over masked-in entries, Bessel-corrected var (TRL's).

    With `shift_mean=False` the mean is added back (TRL, for whitening rewards). Entries
    outside the mask are returned as 0. A single masked-in entry gives 0 (TRL raises).
    """
    count = jnp.sum(mask.astype(x.dtype))
    mean = masked_mean(jnp.where(mask, x, 0.0), mask)
    var = masked_mean(jnp.where(mask, jnp.square(x - mean), 0.0), mask)
    var = var * count / jnp.maximum(count - 1.0, 1.0)
    whitened = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return jnp.where(mask, whitened, 0.0)


def ppo_policy_loss(
    logps_bt: jax.Array,
    old_logps_bt: jax.Array,
    advantages_bt: jax.Array,
    *,
    clip_eps: float = 0.2,
):
    """PPO clipped surrogate, per token (arXiv 1707.06347).

    `max(−A r, −A clip(r, 1−ε, 1+ε))`, `r = exp(log π − log π_old)`. Returns
    `(losses_bt, clipped_bt)`: `clipped_bt` is 1.0 where the clipped term is the larger one
    (TRL's `pg_clipfrac` is its masked mean). Reduce `losses_bt` with the completion mask.
    """
    ratio = jnp.exp(logps_bt - old_logps_bt)
    unclipped = -advantages_bt * ratio
    clipped = -advantages_bt * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(unclipped.dtype)


def ppo_value_loss(
    values_bt: jax.Array,
    old_values_bt: jax.Array,
    returns_bt: jax.Array,
    *,
    clip_eps: float = 0.2,
):
    """Clipped value loss, per token: `½ max((V − R)², (clip(V, V_old ± ε_v) − R)²)`.

    Returns `(losses_bt, clipped_bt)`, 1.0 where the clipped term is the larger one (TRL's
    `vf_clipfrac`). Default ε_v = 0.2 (TRL's `cliprange_value`).
    """
    clipped_values = jnp.clip(values_bt, old_values_bt - clip_eps, old_values_bt + clip_eps)
    unclipped = jnp.square(values_bt - returns_bt)
    clipped = jnp.square(clipped_values - returns_bt)
    return 0.5 * jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(unclipped.dtype)


def ppo_loss(
    logps_bt: jax.Array,
    old_logps_bt: jax.Array,
    advantages_bt: jax.Array,
    values_bt: jax.Array,
    old_values_bt: jax.Array,
    returns_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    clip_eps: float = 0.2,
    clip_eps_value: float = 0.2,
    vf_coef: float = 0.1,
):
    """PPO total loss `pg + c_v · vf`, each a token mean over `mask_bt` (TRL defaults).

    Returns `(loss, metrics)` with metrics `pg_loss`, `vf_loss`, `pg_clipfrac`, `vf_clipfrac`
    and `approx_kl = ½ mean((log π − log π_old)²)`, all scalars. Both losses average over
    `mask_bt`; TRL averages its value loss over a mask one token longer (its score position).
    """
    pg_bt, pg_clipped_bt = ppo_policy_loss(logps_bt, old_logps_bt, advantages_bt, clip_eps=clip_eps)
    vf_bt, vf_clipped_bt = ppo_value_loss(
        values_bt, old_values_bt, returns_bt, clip_eps=clip_eps_value
    )
    pg_loss = masked_mean(pg_bt, mask_bt)
    vf_loss = masked_mean(vf_bt, mask_bt)
    metrics = {
        "pg_loss": pg_loss,
        "vf_loss": vf_loss,
        "pg_clipfrac": masked_mean(pg_clipped_bt, mask_bt),
        "vf_clipfrac": masked_mean(vf_clipped_bt, mask_bt),
        "approx_kl": 0.5 * masked_mean(jnp.square(logps_bt - old_logps_bt), mask_bt),
    }
    return pg_loss + vf_coef * vf_loss, metrics


def adaptive_kl_coef(
    kl_coef: jax.Array | float,
    current_kl: jax.Array | float,
    n_steps: int,
    *,
    target: float = 6.0,
    horizon: float = 10000.0,
):
    """One update of the adaptive KL controller (Ziegler et al., arXiv 1909.08593); pure.

    `e = clip(KL / target − 1, −0.2, 0.2)`, `β_kl ← β_kl (1 + e · n_steps / horizon)`, with
    `n_steps` the samples since the last update. Defaults target 6, horizon 10000 (TRL's
    `AdaptiveKLController`). Returns the new coefficient.
    """
    error = jnp.clip(current_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
