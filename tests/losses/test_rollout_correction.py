"""Truncated completions, the sampler-trainer mismatch and its importance-sampling
correction, against numpy written from docs/objectives.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import (
    mask_truncated_completions,
    rollout_correction_weights,
    sampler_mismatch,
)


@pytest.fixture(scope="module")
def rollout():
    """B = 4, T = 5, lengths 5, 3, 0 (empty), 2; sampler log-probs near the trainer's."""
    rng = np.random.default_rng(4)
    mask = np.arange(5)[None, :] < np.array([5, 3, 0, 2])[:, None]
    old = -rng.uniform(0.05, 3.0, (4, 5))
    sampler = old + rng.normal(0.0, 0.2, (4, 5))
    return dict(mask=mask, old=old, sampler=sampler)


def test_mask_truncated_completions():
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], np.int32)
    has_eos = np.array([True, False, True])
    got = mask_truncated_completions(jnp.asarray(mask), has_eos)
    np.testing.assert_array_equal(got, [[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert got.dtype == jnp.int32
    as_bool = mask_truncated_completions(jnp.asarray(mask, bool), has_eos)
    np.testing.assert_array_equal(as_bool, [[True, True, False], [False] * 3, [True, False, False]])


def test_sampler_mismatch(rollout):
    d, m = rollout, rollout["mask"]
    got = sampler_mismatch(d["old"], d["sampler"], m)
    diff = (d["old"] - d["sampler"])[m]
    assert float(got["mismatch/abs_logp_diff_mean"]) == pytest.approx(np.abs(diff).mean(), 1e-5)
    assert float(got["mismatch/abs_logp_diff_max"]) == pytest.approx(np.abs(diff).max(), 1e-5)
    k3 = np.exp(diff) - 1 - diff
    assert float(got["mismatch/k3_kl"]) == pytest.approx(k3.mean(), rel=1e-5)
    # identical arithmetic: exactly 0; no tokens: 0, not nan
    same = sampler_mismatch(d["old"], d["old"], m)
    assert all(float(v) == 0.0 for v in same.values())
    empty = sampler_mismatch(d["old"], d["sampler"], np.zeros_like(m))
    assert all(float(v) == 0.0 for v in empty.values())


def test_rollout_correction_weights(rollout):
    d, m = rollout, rollout["mask"]
    old = d["old"].copy()
    old[0, 1] = d["sampler"][0, 1] + 2.0  # e^2 > C: truncated at the token level
    diff = np.where(m, old - d["sampler"], 0.0)
    token = rollout_correction_weights(old, d["sampler"], m, level="token", cap=3.0)
    np.testing.assert_allclose(token, np.where(m, np.minimum(np.exp(diff), 3.0), 0), rtol=1e-5)
    assert float(token[0, 1]) == 3.0
    seq = rollout_correction_weights(old, d["sampler"], m, level="sequence", cap=3.0)
    row = np.minimum(np.exp(diff.sum(1)), 3.0)
    np.testing.assert_allclose(seq, np.where(m, row[:, None], 0), rtol=1e-5)
    assert float(seq[0, 0]) == 3.0 and (np.asarray(seq)[m] < 3.0).any()
    # identical arithmetic: every weight on a completion token is exactly 1
    for level in ("off", "token", "sequence"):
        same = rollout_correction_weights(d["old"], d["old"], m, level=level)
        np.testing.assert_array_equal(same, m.astype(np.float32))
    np.testing.assert_array_equal(
        rollout_correction_weights(old, d["sampler"], m, level="off"), m.astype(np.float32)
    )
    # no gradient flows through the weights
    grad = jax.grad(lambda o: jnp.sum(rollout_correction_weights(o, d["sampler"], m)))(
        jnp.asarray(old, jnp.float32)
    )
    np.testing.assert_array_equal(grad, np.zeros_like(old))


def test_errors(rollout):
    lp, m = rollout["old"], rollout["mask"]
    with pytest.raises(ValueError, match="rollout_correction"):
        rollout_correction_weights(lp, lp, m, level="seq")
    with pytest.raises(ValueError, match="cap"):
        rollout_correction_weights(lp, lp, m, cap=0.5)
