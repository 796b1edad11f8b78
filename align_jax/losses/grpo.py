"""GRPO-family policy losses, as pure functions over arrays.

Shapes: `_b` per sequence, `_bt` per completion token; `mask_bt` marks completion tokens
(right-padded). Hyperparameters are Python floats (static under jit); names and defaults are
TRL's `GRPOConfig`. Formulas and library conventions: docs/objectives.md ("RL pieces").

Per token, `grpo_per_token_loss` (advantages come from align_jax.losses.advantages):

- `policy_loss="clip"`: `−min(r A, clip(r, 1 − ε_low, 1 + ε_high) A)` (arXiv 2402.03300),
  clip-higher ε_high > ε_low (DAPO, arXiv 2503.14476), optional two-sided cap `r ≤ δ`
- `policy_loss="cispo"`: CISPO (MiniMax-M1, arXiv 2506.13585),
  `−sg(clip(r, 1 − ε_low, 1 + ε_high)) · A · log π`
- either with GSPO's sequence-level ratio (arXiv 2507.18071), the β · k3 KL to a reference,
  and truncated importance-sampling weights for the sampler–trainer mismatch

The policy loss is orthogonal to the aggregation `loss_type` (grpo / bnpo / dr_grpo / dapo):
TRL's `loss_type="cispo"` is `policy_loss="cispo"` with the default `loss_type="dapo"`.

Aggregation returns a `(numerator, denominator)` pair per (micro-)batch, `grpo_loss_terms`:
summing both over gradient-accumulation micro-batches and dividing once equals one step on
the whole batch exactly, for every loss type. `aggregate_token_loss` divides for one batch;
`grpo_loss` composes the two and returns metric `(sum, count)` pairs, the training step's
contract (docs/objectives.md, "Gradient accumulation").

Rollout side: `mask_truncated_completions` (TRL's `mask_truncated_completions`);
`sampler_mismatch` (Δ = log π_old − log π_sampler: mean and max |Δ|, its k3 KL);
`rollout_correction_weights` (truncated importance sampling, token or sequence level).

One update per rollout batch (μ = 1) passes `old_logps_bt=None`: the ratio is then exactly 1.
With μ > 1 the caller computes the old log-probs once per rollout batch and passes them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses.common import masked_mean
from align_jax.losses.ppo import kl_penalty

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
POLICY_LOSSES = ("clip", "cispo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
ROLLOUT_CORRECTIONS = ("off", "token", "sequence")


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {name} {value!r}; valid: {valid}")


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
    policy_loss: str = "clip",
    is_weights_bt: jax.Array | None = None,
):
    """The GRPO family's per-token loss, before aggregation.

    `r = exp(log π − log π_old)` per token, or with `importance_sampling_level="sequence"`
    GSPO's `r = exp(mean_t (log π − log π_old))` shared by a sequence's tokens.

    - `policy_loss="clip"`: `−min(r A, clip(r, 1 − ε_low, 1 + ε_high) A)`. `delta` caps the
      unclipped ratio, `r ≤ δ` (two-sided clipping, INTELLECT-2's; the clipped ratio is
      taken before the cap, as TRL).
    - `policy_loss="cispo"`: `−sg(clip(r, 1 − ε_low, 1 + ε_high)) · A · log π`. The clipped
      ratio is a weight with no gradient, so every token keeps a gradient
      `−sg(clip(r)) · A · ∇log π`; the loss value itself is not the clip objective's. The
      paper bounds only the top (ε_low large); TRL's `epsilon_high` for CISPO is the cap on
      r itself (its 5.0 is `epsilon_high=4.0` here). `delta` does not apply: an error.

    Then `· w` when `is_weights_bt` is given (`rollout_correction_weights`, no gradient),
    then `+ β k3(π, π_ref)`, which needs `ref_logps_bt` when β ≠ 0. `old_logps_bt=None`
    means μ = 1: the old log-probs are `sg(logps_bt)` and the ratio is exactly 1.
    `advantages_b` [B] (or [B, T]). Padding positions may hold anything (nan, −inf): they
    reach neither the loss nor its gradient.

    Returns `(per_token_loss_bt, info)`, the loss 0 outside `mask_bt`. info: `kl_bt`
    (None without a reference) and bools `low_clipped`, `high_clipped`, `clipped` ([B, T],
    or [B, 1] at sequence level). For clip: the ratio is outside the range on the side where
    clipping binds (A < 0 below, A > 0 above). For CISPO: the weight is truncated, either sign.
    """
    _check("importance_sampling_level", importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    _check("policy_loss", policy_loss, POLICY_LOSSES)
    if beta != 0.0 and ref_logps_bt is None:
        raise ValueError("beta != 0 adds a KL term: pass ref_logps_bt=")
    if policy_loss == "cispo" and delta is not None:
        raise ValueError("delta caps the unclipped ratio of policy_loss='clip'; CISPO has none")
    # where before any arithmetic: padding may be nan or -inf, and 0 * nan is nan in backprop
    logps_bt = jnp.where(mask_bt, logps_bt, 0.0)
    if old_logps_bt is None:
        old_logps_bt = jax.lax.stop_gradient(logps_bt)
    old_logps_bt = jnp.where(mask_bt, old_logps_bt, 0.0)
    advantages = advantages_b[:, None] if advantages_b.ndim == 1 else advantages_b
    if advantages.shape[-1] != 1:
        advantages = jnp.where(mask_bt, advantages, 0.0)

    log_ratio = logps_bt - old_logps_bt
    if importance_sampling_level == "sequence":
        log_ratio = masked_mean(log_ratio, mask_bt, axis=-1)[:, None]
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    if policy_loss == "clip":
        if delta is not None:
            ratio = jnp.minimum(ratio, delta)
        per_token_loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
        low = (ratio < 1.0 - epsilon_low) & (advantages < 0)
        high = (ratio > 1.0 + epsilon_high) & (advantages > 0)
    else:
        per_token_loss = -jax.lax.stop_gradient(clipped_ratio) * advantages * logps_bt
        low, high = ratio < 1.0 - epsilon_low, ratio > 1.0 + epsilon_high
    if is_weights_bt is not None:
        weights = jnp.where(mask_bt, jax.lax.stop_gradient(is_weights_bt), 0.0)
        per_token_loss = per_token_loss * weights

    kl = None
    if ref_logps_bt is not None:
        kl = kl_penalty(logps_bt, jnp.where(mask_bt, ref_logps_bt, 0.0), estimator="k3")
        if beta != 0.0:
            per_token_loss = per_token_loss + beta * kl
    per_token_loss = jnp.where(mask_bt, jnp.broadcast_to(per_token_loss, logps_bt.shape), 0.0)
    info = {"kl_bt": kl, "low_clipped": low, "high_clipped": high, "clipped": low | high}
    return per_token_loss, info


def grpo_loss_terms(
    per_token_loss_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    rollout_tokens: jax.Array | float | None = None,
    rollout_sequences: jax.Array | float | None = None,
    valid_b: jax.Array | None = None,
):
    """`(numerator, denominator)` of a GRPO-family aggregation for one (micro-)batch.

    Sum both over the micro-batches of one optimizer step and divide once (by the sum
    clamped at 1, as the training step does): the result equals the loss on the whole
    step's batch exactly. With `S_b = Σ_t ℓ_bt` over `mask_bt`, `n_b` its tokens, and
    rows the sequences counted:

    - `grpo`: `Σ_b S_b / max(n_b, 1)` over `#rows` (token mean per sequence, then the mean
      over sequences; arXiv 2402.03300)
    - `bnpo`: `Σ_b S_b` over `Σ_b n_b`: the token mean over the optimizer step's batch
    - `dr_grpo`: `Σ_b S_b` over `#rows · max_completion_length` (arXiv 2503.20783; the
      length defaults to the padded T; pass the configured maximum to match TRL)
    - `dapo` (TRL's default): `Σ_b S_b` over `#rows · rollout_tokens / rollout_sequences`,
      with `rollout_tokens` the completion tokens of the whole rollout (generation) batch
      and `rollout_sequences` its sequences (arXiv 2503.14476). Summed over a step, the
      denominator is the rollout batch's tokens shared out over its optimizer steps by rows:
      the whole rollout batch's tokens when one step consumes it (then equal to bnpo),
      rollout tokens / k when k equal minibatches do. Unlike bnpo, it does not depend on how
      long this minibatch's completions happen to be. Recent TRL normalises the same way
      (`num_items_in_batch · gradient_accumulation_steps / steps_per_generation`); older TRL
      divided every step by the whole generation batch's tokens. Without the two
      arguments this batch is the whole rollout batch: the denominator is its tokens.

    `valid_b` (default all rows) marks rows that are real samples; other rows (padding to a
    static batch shape) are left out of every sum and count. A row with an empty mask but
    valid (a truncated completion masked out, TRL's convention) still counts as a sequence.
    Global jax arrays need no per-process division (TRL divides by `num_processes`).
    """
    _check("GRPO loss_type", loss_type, GRPO_LOSS_TYPES)
    if (rollout_tokens is None) != (rollout_sequences is None):
        raise ValueError("dapo's normaliser needs both rollout_tokens= and rollout_sequences=")
    if valid_b is None:
        rows = jnp.ones(mask_bt.shape[:1], per_token_loss_bt.dtype)
    else:
        rows = valid_b.astype(per_token_loss_bt.dtype)
        mask_bt = jnp.where(valid_b[:, None], mask_bt, jnp.zeros_like(mask_bt))
    mask = mask_bt.astype(per_token_loss_bt.dtype)
    token_sums = jnp.sum(jnp.where(mask_bt, per_token_loss_bt, 0.0), axis=-1)
    num_rows = jnp.sum(rows)
    if loss_type == "grpo":
        return jnp.sum(token_sums / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)), num_rows
    if loss_type == "bnpo" or (loss_type == "dapo" and rollout_tokens is None):
        return jnp.sum(token_sums), jnp.sum(mask)
    if loss_type == "dr_grpo":
        length = mask.shape[1] if max_completion_length is None else max_completion_length
        return jnp.sum(token_sums), num_rows * length
    return jnp.sum(token_sums), num_rows * rollout_tokens / rollout_sequences


def aggregate_token_loss(
    per_token_loss_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    rollout_tokens: jax.Array | float | None = None,
    rollout_sequences: jax.Array | float | None = None,
    valid_b: jax.Array | None = None,
) -> jax.Array:
    """The scalar loss of one batch: `grpo_loss_terms`' numerator / max(denominator, 1)."""
    numerator, denominator = grpo_loss_terms(
        per_token_loss_bt,
        mask_bt,
        loss_type=loss_type,
        max_completion_length=max_completion_length,
        rollout_tokens=rollout_tokens,
        rollout_sequences=rollout_sequences,
        valid_b=valid_b,
    )
    return numerator / jnp.maximum(denominator, 1.0)


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
    policy_loss: str = "clip",
    is_weights_bt: jax.Array | None = None,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    rollout_tokens: jax.Array | float | None = None,
    rollout_sequences: jax.Array | float | None = None,
    valid_b: jax.Array | None = None,
):
    """`grpo_per_token_loss`, then `grpo_loss_terms` (see both) for one (micro-)batch.

    Defaults are TRL's `GRPOConfig` (ε = 0.2 both sides, β = 0, `loss_type="dapo"`).
    Returns `(numerator, denominator, metrics)`: the loss is `Σ numerator / Σ denominator`
    over the micro-batches of a step. metrics maps each name to a `(sum, count)` pair, to be
    summed the same way: `clip_ratio/low_mean`, `clip_ratio/high_mean`,
    `clip_ratio/region_mean` (over tokens, or over sequences at sequence level, as TRL), and
    `kl` (over tokens) when `ref_logps_bt` is given.
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
        policy_loss=policy_loss,
        is_weights_bt=is_weights_bt,
    )
    numerator, denominator = grpo_loss_terms(
        per_token_loss,
        mask_bt,
        loss_type=loss_type,
        max_completion_length=max_completion_length,
        rollout_tokens=rollout_tokens,
        rollout_sequences=rollout_sequences,
        valid_b=valid_b,
    )
    rows = jnp.ones(mask_bt.shape[:1], bool) if valid_b is None else valid_b.astype(bool)
    tokens = mask_bt.astype(bool) & rows[:, None]
    dtype = per_token_loss.dtype

    def sum_count(x, where):
        where = jnp.broadcast_to(where, x.shape)
        return jnp.sum(jnp.where(where, x, 0).astype(dtype)), jnp.sum(where.astype(dtype))

    # a sequence-level ratio is clipped per sequence: TRL averages those flags over sequences
    clip_where = rows[:, None] if importance_sampling_level == "sequence" else tokens
    metrics = {
        f"clip_ratio/{name}_mean": sum_count(info[key], clip_where)
        for name, key in (("low", "low_clipped"), ("high", "high_clipped"), ("region", "clipped"))
    }
    if info["kl_bt"] is not None:
        metrics["kl"] = sum_count(info["kl_bt"], tokens)
    return numerator, denominator, metrics


def mask_truncated_completions(mask_bt: jax.Array, has_eos_b: jax.Array) -> jax.Array:
    """`mask_bt` with every row whose completion did not end with EOS zeroed (TRL's
    `mask_truncated_completions`; DAPO, arXiv 2503.14476): truncated completions add no
    token to the loss. Under `loss_type="grpo"` / `"dr_grpo"` they still count as sequences,
    as TRL. Same dtype as `mask_bt`."""
    return jnp.where(jnp.asarray(has_eos_b)[:, None], mask_bt, jnp.zeros_like(mask_bt))


def sampler_mismatch(
    old_logps_bt: jax.Array, sampler_logps_bt: jax.Array, mask_bt: jax.Array
) -> dict[str, jax.Array]:
    """How far the sampler's log-probs are from the trainer's, over completion tokens.

    `Δ_t = log π_old − log π_sampler` (the trainer's forward at the rollout's parameters, and
    the sampler's log-probs of the same tokens at the same temperature). Returns scalars
    `mismatch/abs_logp_diff_mean`, `mismatch/abs_logp_diff_max` (0 with no tokens) and
    `mismatch/k3_kl`, the token mean of `e^Δ − 1 − Δ`: k3's estimate of
    KL(π_sampler ‖ π_old) from the sampled tokens. Identical arithmetic gives exactly 0.
    Batch statistics: compute them on the whole rollout batch.
    """
    diff = jnp.where(mask_bt, old_logps_bt - sampler_logps_bt, 0.0)
    k3 = jnp.expm1(diff) - diff
    return {
        "mismatch/abs_logp_diff_mean": masked_mean(jnp.abs(diff), mask_bt),
        "mismatch/abs_logp_diff_max": jnp.max(jnp.abs(diff)),
        "mismatch/k3_kl": masked_mean(k3, mask_bt),
    }


def rollout_correction_weights(
    old_logps_bt: jax.Array,
    sampler_logps_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    level: str = "token",
    cap: float = 2.0,
) -> jax.Array:
    """Truncated importance-sampling weights for the sampler–trainer mismatch, no gradient.

    With `Δ_t = log π_old − log π_sampler` over completion tokens:

    - `"token"`: `w_t = min(exp(Δ_t), C)`
    - `"sequence"`: `w_t = min(exp(Σ_t Δ_t), C)` for every token of the sequence
    - `"off"`: `w_t = 1`

    C = `cap` ≥ 1 (default 2, TRL's `vllm_importance_sampling_cap`). Pass the weights as
    `grpo_per_token_loss(is_weights_bt=)`: they multiply the policy-gradient term (TRL's
    `vllm_importance_sampling_correction`, modes `token_truncate` / `sequence_truncate`).
    With identical arithmetic Δ = 0 and every weight is exactly 1. Returns [B, T], 0 outside
    `mask_bt`.
    """
    _check("rollout_correction", level, ROLLOUT_CORRECTIONS)
    if cap < 1.0:
        raise ValueError(f"rollout correction cap must be >= 1 (on-policy weight 1), got {cap}")
    diff = jnp.where(mask_bt, old_logps_bt - sampler_logps_bt, 0.0)
    if level == "off":
        weights = jnp.ones_like(diff)
    elif level == "token":
        weights = jnp.minimum(jnp.exp(diff), cap)
    else:
        weights = jnp.minimum(jnp.exp(jnp.sum(diff, axis=-1, keepdims=True)), cap)
    weights = jnp.where(mask_bt, jnp.broadcast_to(weights, diff.shape), 0.0)
    return jax.lax.stop_gradient(weights)
