"""GRPO-family rewards and advantages, as pure functions over arrays.

Layout: `rewards_b` [B] holds G = `group_size` consecutive completions per prompt (TRL's and
verl's GRPO layout); `mask_bt` [B, T] marks completion tokens, right-padded. Formulas, papers
and library conventions are in docs/objectives.md ("RL pieces").

Rewards, before advantages:

- `combine_rewards`: weighted sum over reward functions, NaN skipped (TRL)
- `overlong_penalty`: DAPO's soft overlong punishment (arXiv 2503.14476)
- `zero_variance_groups`: the groups DAPO's dynamic sampling drops (all rewards equal)

Advantages, one per sequence (`_b`) or per token (`_bt`):

- `group_advantages`: GRPO (arXiv 2402.03300) with `scale_rewards` group / batch / none
  (none is Dr. GRPO, arXiv 2503.20783)
- `rloo_advantages`: REINFORCE leave-one-out (arXiv 2402.14740)
- `reinforce_pp_advantages`: REINFORCE++ (arXiv 2501.03262): KL folded into per-token
  rewards, returns-to-go, whitened over all completion tokens of the batch
- `reinforce_pp_baseline_advantages`: REINFORCE++-baseline, the group mean subtracted first

Batch-wide statistics (the batch std, REINFORCE++'s whitening, which groups have zero
variance) are taken over the arrays passed in: call these on the whole rollout batch, before
splitting it into minibatches or gradient-accumulation micro-batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses.ppo import gae, masked_whiten, per_token_rewards

SCALE_REWARDS = ("group", "batch", "none")


def combine_rewards(rewards_bf: jax.Array, weights_f: jax.Array) -> jax.Array:
    """`R_i = Σ_k w_k r_ik` over F reward functions, NaN rewards skipped (TRL's `nansum`)."""
    weighted = rewards_bf * jnp.asarray(weights_f, rewards_bf.dtype)[None, :]
    return jnp.sum(jnp.where(jnp.isnan(rewards_bf), 0.0, weighted), axis=1)


def overlong_penalty(lengths_b: jax.Array, *, max_length: int, cache_length: int) -> jax.Array:
    """DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), added to the reward.

    For a completion of L tokens, with `L_max = max_length` and `L_cache = cache_length`:
    0 if `L ≤ L_max − L_cache`; `(L_max − L_cache − L) / L_cache` (from 0 down to −1) if
    `L_max − L_cache < L ≤ L_max`; −1 if `L > L_max`. Same as TRL's
    `get_soft_overlong_punishment(max_completion_len, soft_punish_cache)`. Returns [B] float32.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"overlong_penalty needs 0 < cache_length <= max_length, got cache_length="
            f"{cache_length}, max_length={max_length}"
        )
    lengths = jnp.asarray(lengths_b, jnp.float32)
    start = float(max_length - cache_length)
    ramp = (start - lengths) / cache_length
    return jnp.where(lengths <= start, 0.0, jnp.where(lengths <= max_length, ramp, -1.0))


def zero_variance_groups(rewards_b: jax.Array, *, group_size: int):
    """Which groups have all G rewards equal (zero variance, so zero GRPO advantage).

    DAPO's dynamic sampling (arXiv 2503.14476) drops these groups and samples more prompts
    until the batch is full; the loop that does it decides how often it may resample and
    counts what it dropped. The test is exact equality, as verl's `std == 0` filter; TRL's
    `frac_reward_zero_std` metric uses `isclose(std, 0)`. Returns `(per_group_g,
    per_sample_b)`, booleans, the second repeated over each group's G samples.
    """
    grouped = jnp.asarray(rewards_b).reshape(-1, group_size)
    per_group = jnp.max(grouped, axis=1) == jnp.min(grouped, axis=1)
    return per_group, jnp.repeat(per_group, group_size)


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


def reinforce_pp_advantages(
    scores_b: jax.Array,
    mask_bt: jax.Array,
    *,
    logps_bt: jax.Array | None = None,
    ref_logps_bt: jax.Array | None = None,
    kl_coef: float = 0.01,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
) -> jax.Array:
    """REINFORCE++ advantages (arXiv 2501.03262): no critic, no group.

    1. Per-token rewards `r_t = −β_kl · kl_t`, plus the score `scores_b` at the last
       completion token (`per_token_rewards`); `kl_t` compares the rollout policy's log-probs
       `logps_bt` with the reference's, k1 by default.
    2. Returns-to-go `G_t = Σ_{s≥t} γ^{s−t} r_s` (`gae` with zero values and λ = 1).
    3. Whitening over every completion token of the batch (`masked_whiten`).

    Defaults `kl_coef = 0.01`, k1, γ = 1 are OpenRLHF's (`init_kl_coef`, `kl_estimator`,
    `gamma`). `kl_coef = 0` needs no log-probs. OpenRLHF whitens with the population variance
    clamped at 1e-8; `masked_whiten` uses the Bessel-corrected variance + 1e-8 (TRL's), a
    factor `sqrt((N−1)/N)` apart over N tokens. Returns `advantages_bt`, 0 outside the mask.
    """
    if kl_coef != 0.0 and (logps_bt is None or ref_logps_bt is None):
        raise ValueError("kl_coef != 0 folds a KL into the rewards: pass logps_bt=, ref_logps_bt=")
    if logps_bt is None or ref_logps_bt is None:
        logps_bt = ref_logps_bt = jnp.zeros(mask_bt.shape, jnp.float32)
    rewards, _ = per_token_rewards(
        jnp.asarray(scores_b),
        jnp.asarray(logps_bt),
        jnp.asarray(ref_logps_bt),
        mask_bt,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
    )
    returns, _ = gae(rewards, jnp.zeros_like(rewards), mask_bt, gamma=gamma, lam=1.0)
    return masked_whiten(returns, mask_bt)


def reinforce_pp_baseline_advantages(
    scores_b: jax.Array,
    mask_bt: jax.Array,
    *,
    group_size: int,
    logps_bt: jax.Array | None = None,
    ref_logps_bt: jax.Array | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
) -> jax.Array:
    """REINFORCE++-baseline (arXiv 2501.03262): `R_i − mean_group R`, then REINFORCE++.

    With the default `kl_coef = 0` every token of sequence i gets `R_i − mean_group R`
    before the global whitening over all completion tokens of the batch; the KL to the
    reference then belongs in the loss (β · k3 in `grpo_per_token_loss`, OpenRLHF's
    recommended `--use_kl_loss`). A nonzero `kl_coef` folds it into the rewards as
    `reinforce_pp_advantages` does (OpenRLHF without `--use_kl_loss`). Returns
    `advantages_bt`.
    """
    centred = group_advantages(scores_b, group_size=group_size, scale_rewards="none")
    return reinforce_pp_advantages(
        centred,
        mask_bt,
        logps_bt=logps_bt,
        ref_logps_bt=ref_logps_bt,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        gamma=gamma,
    )
