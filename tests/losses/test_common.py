"""Token-level pieces (align_jax/losses/common.py) against float64 numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import token_kl


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_token_kl_matches_numpy():
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal((3, 5, 11))).astype(np.float32)
    ref_logits = (3.0 * rng.standard_normal((3, 5, 11))).astype(np.float32)
    logp = log_softmax(logits.astype(np.float64))
    logq = log_softmax(ref_logits.astype(np.float64))
    want = np.zeros((3, 5))
    for b in range(3):
        for t in range(5):
            want[b, t] = sum(
                math.exp(logp[b, t, v]) * (logp[b, t, v] - logq[b, t, v]) for v in range(11)
            )
    got = token_kl(jnp.asarray(logits), jnp.asarray(ref_logits))
    assert got.shape == (3, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert (want > 0.1).all()  # far from the trivial zero
    # Against itself: zero; bfloat16 logits are computed in float32.
    np.testing.assert_allclose(np.asarray(token_kl(logits, logits)), 0.0, atol=1e-6)
    half = token_kl(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(ref_logits, jnp.bfloat16))
    assert half.dtype == jnp.float32


def test_token_kl_hand_value():
    # π = (1/2, 1/2), π_ref = (3/4, 1/4): KL = ½ log(½ / ¾) + ½ log(½ / ¼).
    got = token_kl(jnp.array([[[0.0, 0.0]]]), jnp.array([[[math.log(3.0), 0.0]]]))
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(got[0, 0]) == pytest.approx(want, rel=1e-6)
