"""The optimizer and schedule against hand-computed numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from align_jax.config import base_config
from align_jax.training.optimizer import (
    OPTIMIZERS,
    decay_mask,
    make_optimizer,
    make_schedule,
    per_model,
)


def opt_config(**overrides):
    cfg = base_config().optimizer
    cfg.update(overrides)
    return cfg


def tiny_params():
    """A pure dict shaped like a stacked model: 2 layers, d=3."""
    rng = np.random.default_rng(0)
    return {
        "embed": {"embedding": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)},
        "layers": {
            "attn": {
                "kernel": jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32),
            },
            "norm": {"scale": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)},
        },
        "final_norm": {"scale": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
    }


# ----------------------------------------------------------------------------- schedule

LR, WARMUP, TOTAL, END = 1.0, 10, 110, 0.1


@pytest.mark.parametrize(
    "name, step, expected",
    [
        ("cosine", 0, 0.0),
        ("cosine", 5, 0.5),  # warmup midpoint
        ("cosine", 10, 1.0),  # end of warmup: the peak
        ("cosine", 35, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2),  # a quarter of the decay
        ("cosine", 60, 0.55),  # cosine midpoint: halfway between peak and end
        ("cosine", 110, 0.1),  # end
        ("cosine", 500, 0.1),  # stays at the end value
        ("linear", 5, 0.5),
        ("linear", 10, 1.0),
        ("linear", 35, 0.775),
        ("linear", 60, 0.55),
        ("linear", 110, 0.1),
        ("linear", 500, 0.1),
        ("constant", 5, 0.5),
        ("constant", 10, 1.0),
        ("constant", 110, 1.0),
    ],
)
def test_schedule_values(name, step, expected):
    cfg = opt_config(schedule=name, learning_rate=LR, warmup_steps=WARMUP, end_lr_factor=END)
    schedule = make_schedule(cfg, TOTAL)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6, atol=1e-7)


def test_schedule_without_warmup_starts_at_peak():
    schedule = make_schedule(opt_config(schedule="cosine", learning_rate=2e-3, warmup_steps=0), 100)
    np.testing.assert_allclose(float(schedule(0)), 2e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(50)), 2e-3 * 0.55, rtol=1e-6)


def test_schedule_works_under_jit():
    schedule = make_schedule(opt_config(warmup_steps=4), 20)
    np.testing.assert_allclose(jax.jit(schedule)(jnp.int32(2)), 1.5e-4, rtol=1e-6)


# ----------------------------------------------------------------------------- adamw


def numpy_adamw(params, grads_seq, *, lr_at, b1, b2, eps, wd, clip, mask):
    """AdamW written out: clip by global norm, bias-corrected moments, decoupled decay * lr."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq):
        g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
        norm = math.sqrt(sum(float(np.sum(x**2)) for x in g.values()))
        g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
        lr = lr_at(t)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** (t + 1))
            v_hat = v[k] / (1 - b2 ** (t + 1))
            p[k] = p[k] - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * mask[k] * p[k])
    return p


def test_adamw_matches_numpy():
    rng = np.random.default_rng(1)
    params = {
        "kernel": rng.normal(size=(3, 4)).astype(np.float32),
        "scale": rng.normal(size=(2, 4)).astype(np.float32),  # stacked norm: no decay
        "bias": rng.normal(size=(4,)).astype(np.float32),
    }
    # Large gradients so clipping at 1.0 is active on every step.
    grads_seq = [
        {k: (10 * rng.normal(size=x.shape)).astype(np.float32) for k, x in params.items()}
        for _ in range(3)
    ]
    cfg = opt_config(
        name="adamw",
        learning_rate=0.1,
        schedule="constant",
        warmup_steps=2,
        weight_decay=0.3,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        grad_clip_norm=1.0,
    )
    tx, schedule = make_optimizer(cfg, total_steps=10)
    jparams = jax.tree.map(jnp.asarray, params)
    state = tx.init(jparams)
    for grads in grads_seq:
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, jparams)
        jparams = optax.apply_updates(jparams, updates)

    expected = numpy_adamw(
        params,
        grads_seq,
        lr_at=lambda t: 0.1 * min(t / 2, 1.0),  # warmup 0, 0.05, then 0.1
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        wd=0.3,
        clip=1.0,
        mask={"kernel": 1.0, "scale": 0.0, "bias": 0.0},
    )
    for k in params:
        np.testing.assert_allclose(np.asarray(jparams[k]), expected[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(schedule(1)), 0.05, rtol=1e-6)


# ----------------------------------------------------------------------------- decay mask


def test_decay_mask_by_name_not_ndim():
    mask = decay_mask(tiny_params())
    assert mask == {
        "embed": {"embedding": True},
        "layers": {"attn": {"kernel": True, "bias": False}, "norm": {"scale": False}},
        "final_norm": {"scale": False},
    }


def test_decay_mask_on_flax_pure_dict():
    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(7, 4, rngs=rngs)
            self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
            self.norm = nnx.RMSNorm(4, rngs=rngs)

    pure = nnx.to_pure_dict(nnx.state(Tiny(nnx.Rngs(0)), nnx.Param))
    flat = {
        jax.tree_util.keystr(path): m
        for path, m in jax.tree_util.tree_leaves_with_path(decay_mask(pure))
    }
    assert flat == {
        "['embed']['embedding']": True,
        "['blocks'][0]['kernel']": True,
        "['blocks'][0]['bias']": False,
        "['blocks'][1]['kernel']": True,
        "['blocks'][1]['bias']": False,
        "['norm']['scale']": False,
    }


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_spares_scales_and_biases(name):
    """Zero gradients: only decay acts, so kernels and embeddings shrink and the rest stay."""
    params = tiny_params()
    cfg = opt_config(
        name=name,
        learning_rate=0.5,
        schedule="constant",
        warmup_steps=0,
        weight_decay=0.1,
        momentum=0.0,
    )
    tx, _ = make_optimizer(cfg, total_steps=10)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)
    new = optax.apply_updates(params, updates)

    for path in (("layers", "attn", "bias"), ("layers", "norm", "scale"), ("final_norm", "scale")):
        before, after = params, new
        for key in path:
            before, after = before[key], after[key]
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
    # Exactly p * (1 - lr * wd): decay is decoupled and scaled by the learning rate, for
    # adafactor too (optax's own adafactor decay is not scaled by lr; ours is).
    for path in (("layers", "attn", "kernel"), ("embed", "embedding")):
        before, after = params, new
        for key in path:
            before, after = before[key], after[key]
        np.testing.assert_allclose(
            np.asarray(after), 0.95 * np.asarray(before), rtol=1e-6, atol=1e-7
        )


# ----------------------------------------------------------------------------- every optimizer


@pytest.mark.parametrize(
    "name, lr", [("adamw", 0.05), ("sgd", 0.05), ("adafactor", 0.05), ("lion", 0.05)]
)
def test_each_optimizer_reduces_a_quadratic(name, lr):
    params = tiny_params()
    target = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)

    def loss_fn(p):
        sq = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), p, target)
        return sum(jax.tree.leaves(sq))

    cfg = opt_config(name=name, learning_rate=lr, warmup_steps=5, weight_decay=0.01)
    tx, _ = make_optimizer(cfg, total_steps=60)

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    state = tx.init(params)
    start = float(loss_fn(params))
    for _ in range(60):
        params, state, _ = step(params, state)
    end = float(loss_fn(params))
    assert end < 0.25 * start, (name, start, end)


# ----------------------------------------------------------------------------- clipping


def test_clipping_scales_update_to_clip_norm():
    """sgd, lr 1, no momentum or decay: the update is -clip(g), so its norm is the clip norm."""
    params = tiny_params()
    grads = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), params)
    cfg = opt_config(
        name="sgd",
        learning_rate=1.0,
        schedule="constant",
        warmup_steps=0,
        momentum=0.0,
        weight_decay=0.0,
        grad_clip_norm=2.5,
    )
    tx, _ = make_optimizer(cfg, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 2.5, rtol=1e-6)
    # Direction unchanged: every entry of the update is the same negative number.
    flat = np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])
    np.testing.assert_allclose(flat, flat[0], rtol=1e-6)
    assert flat[0] < 0

    # A small gradient passes through untouched.
    small = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params)
    updates, _ = tx.update(small, tx.init(params), params)
    np.testing.assert_allclose(
        float(optax.tree.norm(updates)), float(optax.tree.norm(small)), rtol=1e-6
    )


def test_per_model_runs_each_optimizer_on_its_own_tree_with_its_own_clipping():
    """PPO's policy and value model: each tree gets its own AdamW (its learning rate) and its
    own global-norm clipping, exactly as the optimizer on that tree alone."""
    policy, value = tiny_params(), jax.tree.map(lambda x: 2.0 * x, tiny_params())
    cfg_p = opt_config(learning_rate=0.1, warmup_steps=0, schedule="constant", grad_clip_norm=1.0)
    cfg_v = opt_config(learning_rate=0.01, warmup_steps=0, schedule="constant", grad_clip_norm=1.0)
    tx_p, tx_v = make_optimizer(cfg_p, 10)[0], make_optimizer(cfg_v, 10)[0]
    tx = per_model({"policy": tx_p, "value": tx_v})
    params = {"policy": policy, "value": value}
    grads = {"policy": jax.tree.map(lambda x: 5.0 * x, policy),
             "value": jax.tree.map(lambda x: 0.01 * x, value)}  # fmt: skip
    state = tx.init(params)
    state_p, state_v = tx_p.init(policy), tx_v.init(value)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        want_p, state_p = tx_p.update(grads["policy"], state_p, policy)
        want_v, state_v = tx_v.update(grads["value"], state_v, value)
        for got, want in ((updates["policy"], want_p), (updates["value"], want_v)):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_array_equal(a, b)
    # the two learning rates differ by 10x, and so do AdamW's updates (about lr each)
    first_p = float(jnp.abs(want_p["final_norm"]["scale"]).max())
    first_v = float(jnp.abs(want_v["final_norm"]["scale"]).max())
    assert first_p > 5 * first_v


# ----------------------------------------------------------------------------- errors


def test_unknown_optimizer_names_the_key():
    with pytest.raises(ValueError, match=r"config\.optimizer\.name") as err:
        make_optimizer(opt_config(name="adam"), total_steps=10)
    for name in OPTIMIZERS:
        assert name in str(err.value)


def test_unknown_schedule_names_the_key():
    with pytest.raises(ValueError, match=r"config\.optimizer\.schedule") as err:
        make_optimizer(opt_config(schedule="exponential"), total_steps=10)
    for name in ("cosine", "linear", "constant"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"grad_accum_steps": 0}, "grad_accum_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"grad_clip_norm": -1.0}, "grad_clip_norm"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_out_of_range_values_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"config\.optimizer\.{key}"):
        make_optimizer(opt_config(**overrides), total_steps=10)
