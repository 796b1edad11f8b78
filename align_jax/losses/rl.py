"""RL for language models: PPO pieces and GRPO pieces, as pure functions.

Shapes: `_b` per sequence, `_bt` per completion token, `mask_bt` marks completion tokens
(right-padded: a sequence's completion tokens come before its padding). Hyperparameters are
Python floats (static under jit). Names and defaults follow TRL; OpenRLHF and verl differences
are noted where they exist.

- PPO (arXiv 1707.06347) for RLHF: KL estimators, per-token rewards with a KL penalty, GAE
  (arXiv 1506.02438) as a reverse `lax.scan`, whitening, clipped policy and value losses, the
  adaptive KL controller (Ziegler et al., arXiv 1909.08593).
- GRPO (DeepSeekMath, arXiv 2402.03300): group advantages, RLOO advantages (arXiv 2402.14740),
  the clipped per-token loss with DAPO's clip-higher (arXiv 2503.14476), GSPO's sequence-level
  ratio (arXiv 2507.18071) and the four loss aggregations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses.common import masked_mean

KL_ESTIMATORS = ("k1", "k2", "k3")
SCALE_REWARDS = ("group", "batch", "none")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


# ----------------------------------------------------------------------------- PPO


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


# ----------------------------------------------------------------------------- GRPO


def combine_rewards(rewards_bf: jax.Array, weights_f: jax.Array) -> jax.Array:
    """`R_i = Σ_k w_k r_ik` over F reward functions, NaN rewards skipped (TRL's `nansum`)."""
    weighted = rewards_bf * jnp.asarray(weights_f, rewards_bf.dtype)[None, :]
    return jnp.sum(jnp.where(jnp.isnan(rewards_bf), 0.0, weighted), axis=1)


def group_advantages(rewards_b: jax.Array, *, group_size: int, scale_rewards: str = "group"):
    """GRPO advantages: `A_i = (R_i − mean_group R) / (std + 1e-4)` (arXiv 2402.03300).

    `rewards_b` [B] holds `group_size` (G) consecutive completions per prompt. The std is
    Bessel-corrected (torch's `std`): per group (`"group"`), over the whole batch of rewards
    (`"batch"`), or no scaling at all (`"none"`, Dr. GRPO, arXiv 2503.20783). The std of a
    single sample counts as 0, as TRL. Returns `advantages_b`, the same on every token.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"Unknown scale_rewards {scale_rewards!r}; valid: {SCALE_REWARDS}")
    grouped = rewards_b.reshape(-1, group_size)
    advantages = (grouped - jnp.mean(grouped, axis=1, keepdims=True)).reshape(-1)
    if scale_rewards == "none":
        return advantages
    if scale_rewards == "group":
        std = jnp.std(grouped, axis=1, ddof=1) if group_size > 1 else jnp.zeros(grouped.shape[0])
        std = jnp.repeat(std, group_size)
    else:
        std = jnp.std(rewards_b, ddof=1) if rewards_b.size > 1 else jnp.zeros(())
    return advantages / (std + 1e-4)


def rloo_advantages(rewards_b: jax.Array, *, group_size: int) -> jax.Array:
    """REINFORCE leave-one-out advantages `A_i = R_i − mean_{j≠i} R_j` (arXiv 2402.14740).

    `rewards_b` [B] holds G = `group_size` ≥ 2 consecutive completions per prompt (the GRPO
    layout; TRL's older RLOOTrainer stacked them as [G, prompts]). Equals
    `G/(G−1) · (R_i − mean_group R)`.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2, got {group_size}")
    grouped = rewards_b.reshape(-1, group_size)
    baseline = (jnp.sum(grouped, axis=1, keepdims=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def grpo_per_token_loss(
    logps_bt: jax.Array,
    old_logps_bt: jax.Array | None,
    advantages_b: jax.Array,
    mask_bt: jax.Array,
    *,
    ref_logps_bt: jax.Array | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    delta: float | None = None,
    importance_sampling_level: str = "token",
):
    """GRPO's clipped per-token loss (arXiv 2402.03300), before aggregation.

    `−min(r A, clip(r, 1 − ε_low, 1 + ε_high) A) + β k3`, with `r = exp(log π − log π_old)`
    per token, or with `importance_sampling_level="sequence"` GSPO's (arXiv 2507.18071)
    `r = exp(mean_t (log π − log π_old))` shared by a sequence's tokens. `ε_high > ε_low` is
    DAPO's clip-higher (arXiv 2503.14476). `delta` caps the unclipped ratio, `r ≤ δ`
    (two-sided clipping, INTELLECT-2's; the clipped ratio is taken before the cap, as TRL).
    `old_logps_bt=None` means one update per rollout batch (μ = 1): the old log-probs are
    `stop_gradient(logps_bt)`, so the ratio is exactly 1. The KL term needs `ref_logps_bt`
    when β ≠ 0. `advantages_b` [B] (or [B, T]).

    Returns `(per_token_loss_bt, info)`; info has `kl_bt` (None without a reference) and
    bools `low_clipped`, `high_clipped`, `clipped` ([B, T], or [B, 1] at sequence level):
    where the ratio lies outside the clip range on the side where clipping binds.
    """
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"Unknown importance_sampling_level {importance_sampling_level!r}; "
            f"valid: {IMPORTANCE_SAMPLING_LEVELS}"
        )
    if beta != 0.0 and ref_logps_bt is None:
        raise ValueError("beta != 0 adds a KL term: pass ref_logps_bt=")
    if old_logps_bt is None:
        old_logps_bt = jax.lax.stop_gradient(logps_bt)
    advantages = advantages_b[:, None] if advantages_b.ndim == 1 else advantages_b

    log_ratio = logps_bt - old_logps_bt
    if importance_sampling_level == "sequence":
        log_ratio = masked_mean(log_ratio, mask_bt, axis=-1)[:, None]
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    if delta is not None:
        ratio = jnp.minimum(ratio, delta)
    per_token_loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)

    kl = None
    if ref_logps_bt is not None:
        kl = kl_penalty(logps_bt, ref_logps_bt, estimator="k3")
        if beta != 0.0:
            per_token_loss = per_token_loss + beta * kl
    low_clipped = (ratio < 1.0 - epsilon_low) & (advantages < 0)
    high_clipped = (ratio > 1.0 + epsilon_high) & (advantages > 0)
    info = {
        "kl_bt": kl,
        "low_clipped": low_clipped,
        "high_clipped": high_clipped,
        "clipped": low_clipped | high_clipped,
    }
    return jnp.broadcast_to(per_token_loss, logps_bt.shape), info


def aggregate_token_loss(
    per_token_loss_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    num_items_in_batch: jax.Array | float | None = None,
) -> jax.Array:
    """Reduce a per-token loss to a scalar, GRPO-family style (TRL's `loss_type`).

    - `grpo`: mean over each sequence's tokens, then over sequences (arXiv 2402.03300)
    - `bnpo`: sum over tokens / tokens in this batch
    - `dr_grpo`: sum / (sequences × `max_completion_length`) (arXiv 2503.20783); defaults to
      the padded length T; pass the configured maximum to match TRL on shorter batches
    - `dapo` (TRL's default): sum / `num_items_in_batch`, the completion tokens of the whole
      generation batch that these per-call losses are summed over (gradient-accumulation
      micro-batches; arXiv 2503.14476). Defaults to this call's token count, which is right
      when this call is the whole batch. With global jax arrays there is no per-process
      division (TRL divides by `num_items_in_batch / num_processes` because DDP averages).
    """
    per_token_loss_bt = jnp.where(mask_bt, per_token_loss_bt, 0.0)
    mask = mask_bt.astype(per_token_loss_bt.dtype)
    token_sum = jnp.sum(per_token_loss_bt)
    token_count = jnp.maximum(jnp.sum(mask), 1.0)
    if loss_type == "grpo":
        return jnp.mean(masked_mean(per_token_loss_bt, mask, axis=-1))
    if loss_type == "bnpo":
        return token_sum / token_count
    if loss_type == "dr_grpo":
        length = (
            per_token_loss_bt.shape[1] if max_completion_length is None else max_completion_length
        )
        return token_sum / (per_token_loss_bt.shape[0] * length)
    if loss_type == "dapo":
        return token_sum / (token_count if num_items_in_batch is None else num_items_in_batch)
    raise ValueError(f"Unknown GRPO loss_type {loss_type!r}; valid: {GRPO_LOSS_TYPES}")


def grpo_loss(
    logps_bt: jax.Array,
    old_logps_bt: jax.Array | None,
    advantages_b: jax.Array,
    mask_bt: jax.Array,
    *,
    ref_logps_bt: jax.Array | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    num_items_in_batch: jax.Array | float | None = None,
):
    """GRPO-family loss: `grpo_per_token_loss` then `aggregate_token_loss` (see both).

    Defaults are TRL's `GRPOConfig` (ε = 0.2 both sides, β = 0, `loss_type="dapo"`).
    Returns `(loss, metrics)`; metrics are scalars `clip_ratio/low_mean`,
    `clip_ratio/high_mean`, `clip_ratio/region_mean` (token means, or sequence means at
    sequence level, as TRL) and `kl` (token mean) when `ref_logps_bt` is given.
    """
    per_token_loss, info = grpo_per_token_loss(
        logps_bt,
        old_logps_bt,
        advantages_b,
        mask_bt,
        ref_logps_bt=ref_logps_bt,
        beta=beta,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        delta=delta,
        importance_sampling_level=importance_sampling_level,
    )
    loss = aggregate_token_loss(
        per_token_loss,
        mask_bt,
        loss_type=loss_type,
        max_completion_length=max_completion_length,
        num_items_in_batch=num_items_in_batch,
    )

    def batch_mean(x):
        x = x.astype(per_token_loss.dtype)
        if importance_sampling_level == "sequence":
            return jnp.mean(x)
        return masked_mean(x, mask_bt)

    metrics = {
        "clip_ratio/low_mean": batch_mean(info["low_clipped"]),
        "clip_ratio/high_mean": batch_mean(info["high_clipped"]),
        "clip_ratio/region_mean": batch_mean(info["clipped"]),
    }
    if info["kl_bt"] is not None:
        metrics["kl"] = masked_mean(info["kl_bt"], mask_bt)
    return loss, metrics
