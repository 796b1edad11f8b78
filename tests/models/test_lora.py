"""LoRA on the model: fresh adapters change nothing, the adapter path computes
x W + (alpha / r) (x A) B, merging folds it into the kernels, and configs are checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align_jax import parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.models import abstract_params, apply_model, count_params, init_params, lora
from align_jax.models.layers import Attention

SMALL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64)
ALL = "q,k,v,o,gate,up,down"


def one_device_mesh():
    return parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def lora_model(targets=ALL, rank=4, alpha=8.0, **extra):
    """(plain cfg, LoRA cfg, plain graphdef, LoRA graphdef, base params, LoRA adapters)."""
    plain = model_config(**SMALL, **extra)
    with_lora = model_config(**SMALL, **extra, lora=dict(rank=rank, alpha=alpha, targets=targets))
    mesh = one_device_mesh()
    graphdef, base, _ = init_params(plain, mesh, DEFAULT_RULES, 0)
    lora_graphdef, fresh, _ = init_params(with_lora, mesh, DEFAULT_RULES, 1)
    adapters, _ = lora.split(fresh)
    return plain, with_lora, graphdef, lora_graphdef, base, adapters


def random_b(adapters, seed=0):
    """Adapters with B drawn at random, so the low-rank update is not zero."""
    leaves, treedef = jax.tree.flatten_with_path(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = [
        0.3 * jax.random.normal(k, x.shape) if path[-1].key.endswith("_lora_b") else x
        for k, (path, x) in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(adapters), out)


TOKENS = jax.random.randint(jax.random.key(7), (2, 10), 0, SMALL["vocab_size"])


@pytest.mark.parametrize("extra", [{}, dict(qkv_bias=True, qk_norm=True)], ids=["llama", "qwen"])
def test_zero_initialised_adapters_leave_logits_unchanged(extra):
    plain, with_lora, graphdef, lora_graphdef, base, adapters = lora_model(**extra)
    attn = adapters["layers"]["attn"]
    assert set(attn) == {f"{t}_lora_{s}" for t in "qkvo" for s in "ab"}
    assert (
        float(jnp.abs(attn["q_lora_a"]).max()) > 0 and float(jnp.abs(attn["q_lora_b"]).max()) == 0
    )
    want = apply_model(graphdef, base, TOKENS)
    got = apply_model(lora_graphdef, lora.join(base, adapters), TOKENS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    n_adapters = sum(x.size for x in jax.tree.leaves(adapters))
    assert count_params(with_lora) == count_params(plain) + n_adapters


def test_adapter_shapes_axes_and_init():
    _, with_lora, *_ = lora_model(rank=4)
    _, shapes, axes = abstract_params(with_lora)
    attn, attn_axes = shapes["layers"]["attn"], axes["layers"]["attn"]
    assert attn["q_lora_a"].shape == (2, 32, 4) and attn["q_lora_b"].shape == (2, 4, 4, 8)
    assert attn["o_lora_a"].shape == (2, 4, 8, 4) and attn["o_lora_b"].shape == (2, 4, 32)
    assert attn_axes["o_lora_a"] == ("layers", "heads", "head_dim", None)
    assert attn_axes["o_lora_b"] == ("layers", None, "embed")
    assert axes["layers"]["mlp"]["down_lora_a"] == ("layers", "mlp", None)
    # A ~ U(+-1/sqrt(fan_in)) (PEFT's kaiming-uniform default), fan_in = heads * head_dim for o.
    *_, adapters = lora_model(rank=4)
    a = np.asarray(adapters["layers"]["attn"]["o_lora_a"])
    assert np.abs(a).max() <= 1 / np.sqrt(32) and np.abs(a).max() > 0.8 / np.sqrt(32)


def test_adapter_path_is_x_w_plus_scaled_low_rank_update():
    """One unstacked attention layer checked by hand: q = x Wq + (alpha / r) (x A) B."""
    cfg = model_config(**SMALL, lora=dict(rank=2, alpha=6.0, targets="q,o"))
    attn = Attention(cfg, nnx.Rngs(0))
    attn.q_lora_b[...] = jax.random.normal(jax.random.key(1), attn.q_lora_b[...].shape)
    x = np.asarray(jax.random.normal(jax.random.key(3), (1, 5, 32)))
    p = lambda name: np.asarray(getattr(attn, name)[...])  # noqa: E731
    want = np.einsum("bld,dhk->blhk", x, p("q_kernel")) + 3.0 * np.einsum(
        "bld,dr,rhk->blhk", x, p("q_lora_a"), p("q_lora_b")
    )
    np.testing.assert_allclose(np.asarray(attn.project(x, "q")), want, rtol=1e-5, atol=1e-5)
    assert not hasattr(attn, "k_lora_a")


@pytest.mark.parametrize("targets", [ALL, "v,down"])
def test_merged_model_equals_lora_model(targets):
    plain, with_lora, graphdef, lora_graphdef, base, adapters = lora_model(targets=targets)
    params = lora.join(base, random_b(adapters))
    lora_logits = apply_model(lora_graphdef, params, TOKENS)
    merged = lora.merge_lora(params, with_lora)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    assert not np.allclose(lora_logits, apply_model(graphdef, base, TOKENS), atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(apply_model(graphdef, merged, TOKENS)), np.asarray(lora_logits), atol=2e-5
    )


def test_lora_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"config.model.lora.targets 'q,qq' .* q, k, v, o, gate"):
        abstract_params(model_config(**SMALL, lora=dict(rank=2, alpha=4.0, targets="q,qq")))
    with pytest.raises(ValueError, match=r"config.model.lora.rank=-1"):
        abstract_params(model_config(**SMALL, lora=dict(rank=-1, alpha=4.0, targets="q")))
