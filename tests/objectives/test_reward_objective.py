"""Bradley–Terry loss against hand-computed values; rewards read at the last real token."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax import objectives, parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.losses import bradley_terry_loss
from align_jax.models import apply_model, init_params
from align_jax.objectives.reward import last_token_rewards


def test_bradley_terry_hand_computed():
    rc, rr = jnp.array([2.0, -1.0, 0.5]), jnp.array([1.0, 0.0, 0.5])
    # -log sigmoid(d) = log(1 + e^-d)
    want = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0)), math.log(2.0)]
    np.testing.assert_allclose(bradley_terry_loss(rc, rr), want, rtol=1e-6)
    margin = jnp.array([0.5, 0.0, -1.0])
    want_m = [math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.0)), math.log1p(math.exp(-1.0))]
    np.testing.assert_allclose(bradley_terry_loss(rc, rr, margin_b=margin), want_m, rtol=1e-6)
    centred = bradley_terry_loss(rc, rr, center_coef=0.01)
    np.testing.assert_allclose(
        centred, np.array(want) + 0.01 * np.array([9.0, 1.0, 1.0]), rtol=1e-6
    )
    # d/d r_c of -log sigmoid(r_c - r_r) = -(1 - sigmoid(d))
    g = jax.grad(lambda c: bradley_terry_loss(c, rr).sum())(rc)
    np.testing.assert_allclose(g, -(1 - jax.nn.sigmoid(rc - rr)), rtol=1e-6)


def test_reward_read_at_last_real_token_and_loss_matches_manual():
    cfg = objectives.config_for("reward")
    cfg.objective.center_coef = 0.1
    cfg.model = model_config(
        "tiny", head="scalar", vocab_size=64, d_model=32, head_dim=8, mlp_dim=64
    )
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    graphdef, params, _ = init_params(cfg.model, mesh, DEFAULT_RULES, 0)
    lengths = [5, 3, 8]
    tokens = np.zeros((3, 8), np.int32)
    segments = np.zeros((3, 8), np.int32)
    rng = np.random.default_rng(0)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, 64, n)
        segments[i, :n] = 1
    got = last_token_rewards(graphdef, params, jnp.asarray(tokens), jnp.asarray(segments))
    for i, n in enumerate(lengths):  # the same sequence alone, unpadded
        alone = apply_model(graphdef, params, jnp.asarray(tokens[i : i + 1, :n]))
        np.testing.assert_allclose(got[i], alone[0, -1], rtol=1e-5, atol=1e-6)

    objective = objectives.build(cfg, graphdef)
    batch = {
        "chosen_tokens": tokens[:2],
        "chosen_segment_ids": segments[:2],
        "rejected_tokens": tokens[1:],
        "rejected_segment_ids": segments[1:],
        "margin": np.array([0.0, 0.3], np.float32),
        "valid": np.array([1.0, 0.0], np.float32),
    }
    loss_sum, (n, metrics) = objective.loss_fn(params, None, batch, None)
    rc, rr = float(got[0]), float(got[1])
    want = math.log1p(math.exp(-(rc - rr))) + 0.1 * (rc + rr) ** 2  # the invalid pair is ignored
    assert float(n) == 1.0
    assert float(loss_sum) == pytest.approx(want, rel=1e-5)
    assert float(metrics["accuracy"][0]) == float(rc > rr)


def test_reward_objective_needs_a_scalar_head():
    cfg = objectives.config_for("reward")
    with pytest.raises(ValueError, match="needs config.model.head='scalar'"):
        objectives.build(cfg, None)
