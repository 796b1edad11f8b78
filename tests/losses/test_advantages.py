"""GRPO-family rewards and advantages against numpy loops written from docs/objectives.md."""

import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import (
    combine_rewards,
    group_advantages,
    overlong_penalty,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    zero_variance_groups,
)


def test_combine_rewards_skips_nan():
    rewards = np.array([[1.0, 0.0], [np.nan, 2.0], [0.5, np.nan]])
    got = combine_rewards(jnp.asarray(rewards), jnp.array([1.0, 0.5]))
    np.testing.assert_allclose(got, [1.0, 1.0, 0.5])


@pytest.mark.parametrize(
    "rewards,group_size",
    [
        ([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 1.0, 1.0], 4),
        ([0.3, -1.2, 2.5, 0.0, 0.0, 4.0], 3),
    ],
)
def test_group_advantages(rewards, group_size):
    rewards = np.array(rewards)
    cases = {"group": [], "batch": [], "none": []}
    batch_std = np.sqrt(np.sum((rewards - rewards.mean()) ** 2) / (len(rewards) - 1))
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / group_size
        std = np.sqrt(sum((r - mean) ** 2 for r in group) / (group_size - 1))
        for r in group:
            cases["group"].append((r - mean) / (std + 1e-4))
            cases["batch"].append((r - mean) / (batch_std + 1e-4))
            cases["none"].append(r - mean)  # Dr. GRPO: raw centred rewards
    for scale, want in cases.items():
        got = group_advantages(jnp.asarray(rewards), group_size=group_size, scale_rewards=scale)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a group with equal rewards has zero advantage, not nan
    assert np.isfinite(group_advantages(jnp.asarray(rewards), group_size=group_size)).all()


def test_group_advantages_by_hand():
    rewards = jnp.array([1.0, 0.0, 0.0, 1.0])
    # group (1, 0, 0, 1): mean 1/2, Bessel std sqrt(1/3)
    hand = 0.5 / (np.sqrt(1 / 3) + 1e-4)
    assert float(group_advantages(rewards, group_size=4)[0]) == pytest.approx(hand, rel=1e-5)
    # one sample per group: std counts as 0, the advantage is 0
    np.testing.assert_array_equal(group_advantages(rewards, group_size=1), np.zeros(4))
    with pytest.raises(ValueError, match="group"):
        group_advantages(rewards, group_size=4, scale_rewards="global")


def test_rloo_advantages():
    rewards = np.array([1.0, 0.0, 3.0, 2.0, -1.0, 0.5])
    got = rloo_advantages(jnp.asarray(rewards), group_size=3)
    want = []
    for g in rewards.reshape(-1, 3):
        for i in range(3):
            want.append(g[i] - np.mean([g[j] for j in range(3) if j != i]))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    centred = rewards.reshape(-1, 3) - rewards.reshape(-1, 3).mean(1, keepdims=True)
    np.testing.assert_allclose(got, 1.5 * centred.reshape(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(jnp.asarray(rewards), group_size=1)


def reference_reinforce_pp(scores, logps, ref, lengths, kl_coef, gamma, width):
    """Per row: -kl_coef * k1 on each token, score on the last; returns-to-go; whiten."""
    returns = []
    for b, n in enumerate(lengths):
        rewards = [-kl_coef * (logps[b, t] - ref[b, t]) for t in range(n)]
        if n:
            rewards[-1] += scores[b]
        row, running = [], 0.0
        for r in reversed(rewards):
            running = r + gamma * running
            row.insert(0, running)
        returns.append(row)
    flat = np.array([x for row in returns for x in row])
    mean = flat.mean()
    var = np.sum((flat - mean) ** 2) / (len(flat) - 1)
    out = np.zeros((len(lengths), width))
    for b, row in enumerate(returns):
        out[b, : len(row)] = (np.array(row) - mean) / np.sqrt(var + 1e-8)
    return out


@pytest.fixture(scope="module")
def ragged():
    """B = 6, T = 5, lengths 5, 3, 0 (an empty row), 1, 4, 2."""
    rng = np.random.default_rng(3)
    lengths = np.array([5, 3, 0, 1, 4, 2])
    mask = np.arange(5)[None, :] < lengths[:, None]
    logps = -rng.uniform(0.05, 3.0, (6, 5))
    ref = logps + rng.normal(0.0, 0.5, (6, 5))
    scores = np.array([1.0, -0.5, 2.0, 0.0, 1.5, -1.0])
    return dict(lengths=lengths, mask=mask, logps=logps, ref=ref, scores=scores)


@pytest.mark.parametrize("kl_coef,gamma", [(0.01, 1.0), (0.2, 0.9), (0.0, 1.0)])
def test_reinforce_pp(ragged, kl_coef, gamma):
    d = ragged
    got = reinforce_pp_advantages(
        d["scores"],
        d["mask"],
        logps_bt=d["logps"],
        ref_logps_bt=d["ref"],
        kl_coef=kl_coef,
        gamma=gamma,
    )
    want = reference_reinforce_pp(
        d["scores"], d["logps"], d["ref"], d["lengths"], kl_coef, gamma, 5
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_reinforce_pp_by_hand():
    # scores (1, 0), lengths (2, 1), no KL: returns (1, 1 | 0), mean 2/3, Bessel var 1/3
    mask = np.array([[True, True], [True, False]])
    got = np.asarray(reinforce_pp_advantages(jnp.array([1.0, 0.0]), mask, kl_coef=0.0))
    s = np.sqrt(1 / 3 + 1e-8)
    np.testing.assert_allclose(got, [[1 / 3 / s, 1 / 3 / s], [-2 / 3 / s, 0.0]], rtol=1e-5)
    with pytest.raises(ValueError, match="logps_bt"):
        reinforce_pp_advantages(jnp.array([1.0, 0.0]), mask)


def test_reinforce_pp_baseline(ragged):
    d = ragged
    centred = d["scores"].reshape(-1, 3) - d["scores"].reshape(-1, 3).mean(1, keepdims=True)
    centred = centred.reshape(-1)
    # no KL: every token of row i carries R_i - mean_group R, then the global whitening
    got = reinforce_pp_baseline_advantages(d["scores"], d["mask"], group_size=3)
    tokens = np.concatenate([np.full(n, centred[b]) for b, n in enumerate(d["lengths"])])
    std = np.sqrt(tokens.var(ddof=1) + 1e-8)
    want = np.where(d["mask"], (centred[:, None] - tokens.mean()) / std, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # with a KL folded in: REINFORCE++ on the centred scores
    with_kl = reinforce_pp_baseline_advantages(
        d["scores"],
        d["mask"],
        group_size=3,
        logps_bt=d["logps"],
        ref_logps_bt=d["ref"],
        kl_coef=0.1,
    )
    want = reference_reinforce_pp(centred, d["logps"], d["ref"], d["lengths"], 0.1, 1.0, 5)
    np.testing.assert_allclose(with_kl, want, rtol=1e-5, atol=1e-6)


def test_overlong_penalty():
    # L_max = 20, L_cache = 4: free up to 16, a linear ramp to -1 at 20, -1 beyond
    lengths = jnp.array([0, 15, 16, 17, 18, 19, 20, 21, 100])
    got = overlong_penalty(lengths, max_length=20, cache_length=4)
    want = [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == jnp.float32
    # the cache as long as the limit: the ramp starts at 0 tokens
    np.testing.assert_allclose(
        overlong_penalty(jnp.array([0, 2, 4, 5]), max_length=4, cache_length=4),
        [0.0, -0.5, -1.0, -1.0],
    )
    for cache in (0, 21):
        with pytest.raises(ValueError, match="cache_length"):
            overlong_penalty(lengths, max_length=20, cache_length=cache)


def test_zero_variance_groups():
    rewards = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.75])
    per_group, per_sample = zero_variance_groups(rewards, group_size=3)
    np.testing.assert_array_equal(per_group, [True, False, True, False])
    np.testing.assert_array_equal(per_sample, np.repeat([True, False, True, False], 3))
    # they are exactly the groups whose GRPO advantages are all zero
    advantages = np.asarray(group_advantages(rewards, group_size=3)).reshape(4, 3)
    np.testing.assert_array_equal(np.all(advantages == 0.0, axis=1), per_group)
