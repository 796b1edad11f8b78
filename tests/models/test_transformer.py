"""Model: shapes, causality, packing isolation, family switches, soft-capping, bf16, and
sharded == single device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax import parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.losses import token_logprobs
from align_jax.models import abstract_params, apply_model, count_params, init_params
from align_jax.models.layers import apply_rope, rope_inv_freq

SMALL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64)
FAMILIES = {
    "llama": {},
    "qwen2": dict(qkv_bias=True, tie_embeddings=True),
    "qwen3": dict(qk_norm=True),
    "gemma2": dict(
        activation="gelu",
        norm_offset=1.0,
        post_norms=True,
        embed_scale=True,
        tie_embeddings=True,
        final_logit_softcap=30.0,
        attn_logit_softcap=50.0,
        query_scale=0.25,
    ),
    "llama3_rope": dict(rope_scaling=dict(type="llama3", factor=8.0, original_max_position=16)),
}


def one_device_mesh():
    return parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def family_config(family="llama", **extra):
    return model_config(**SMALL, **{**FAMILIES[family], **extra})


def build(family="llama", mesh=None, seed=0, **extra):
    cfg = family_config(family, **extra)
    mesh = mesh or one_device_mesh()
    graphdef, params, _ = init_params(cfg, mesh, DEFAULT_RULES, seed)
    return cfg, graphdef, params


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shapes_param_count_and_causality(family):
    cfg, graphdef, params = build(family)
    assert sum(x.size for x in jax.tree.leaves(params)) == count_params(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    logits = apply_model(graphdef, params, tokens)
    assert logits.shape == (2, 12, cfg.vocab_size) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # Changing token t never changes a logit at a position before t.
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % cfg.vocab_size)
    logits2 = apply_model(graphdef, params, changed)
    np.testing.assert_allclose(logits[:, :7], logits2[:, :7], atol=1e-6)
    assert not np.allclose(logits[:, 7:], logits2[:, 7:])


def test_final_logit_softcap_is_cap_tanh_of_the_uncapped_logits():
    # The cap is no parameter: the same parameters run with it off and with one that binds.
    cfg, graphdef, params = build("gemma2", final_logit_softcap=0.0)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    raw = np.asarray(apply_model(graphdef, params, tokens))
    cap = 0.25 * float(np.abs(raw).max())
    capped_graphdef = abstract_params(family_config("gemma2", final_logit_softcap=cap))[0]
    capped = np.asarray(apply_model(capped_graphdef, params, tokens))
    assert np.mean(np.abs(raw) > 2 * cap) > 0.01  # the cap bends a share of the logits hard
    np.testing.assert_allclose(capped, cap * np.tanh(raw / cap), rtol=1e-5, atol=1e-6)


def test_packing_isolation_equals_separate_documents():
    cfg, graphdef, params = build()
    doc_a = jnp.array([5, 9, 11, 3, 7])
    doc_b = jnp.array([2, 8, 4, 6])
    packed = jnp.concatenate([doc_a, doc_b, jnp.zeros(3, jnp.int32)])[None]
    segments = jnp.array([[1] * 5 + [2] * 4 + [0] * 3])
    positions = jnp.array([list(range(5)) + list(range(4)) + [0] * 3])
    packed_logits = apply_model(graphdef, params, packed, positions, segments)
    alone_a = apply_model(graphdef, params, doc_a[None])
    alone_b = apply_model(graphdef, params, doc_b[None])
    np.testing.assert_allclose(packed_logits[0, :5], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(packed_logits[0, 5:9], alone_b[0], atol=1e-5)


def test_rope_is_a_rotation_relative_in_position():
    cfg = model_config(**SMALL)
    inv = rope_inv_freq(cfg)
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, cfg.head_dim))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, cfg.head_dim))
    dot = lambda pq, pk: float(
        jnp.sum(apply_rope(q, jnp.array([[pq]]), inv) * apply_rope(k, jnp.array([[pk]]), inv))
    )  # noqa: E731
    assert dot(3, 1) == pytest.approx(dot(10, 8), rel=1e-5)
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rope(q, jnp.array([[5]]), inv)), jnp.linalg.norm(q), rtol=1e-6
    )


def test_llama3_rope_scaling_matches_reference_formula():
    cfg = model_config(
        **SMALL,
        rope_theta=500000.0,
        rope_scaling=dict(
            type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position=64,
        ),
    )
    got = np.asarray(rope_inv_freq(cfg))
    base = 1.0 / (500000.0 ** (np.arange(0, 8, 2) / 8))
    want = []
    for f in base:  # the published recipe, element by element
        wavelen = 2 * np.pi / f
        if wavelen < 64 / 4.0:
            want.append(f)
        elif wavelen > 64 / 1.0:
            want.append(f / 8.0)
        else:
            s = (64 / wavelen - 1.0) / (4.0 - 1.0)
            want.append((1 - s) * f / 8.0 + s * f)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_token_logprobs_matches_log_softmax_and_temperature():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 11)) * 3
    targets = jax.random.randint(jax.random.key(1), (2, 3), 0, 11)
    for t in (1.0, 0.7):
        ref = np.take_along_axis(
            np.asarray(jax.nn.log_softmax(logits / t)), np.asarray(targets)[..., None], -1
        )[..., 0]
        np.testing.assert_allclose(token_logprobs(logits, targets, temperature=t), ref, atol=1e-5)


def test_bf16_compute_close_to_fp32():
    cfg, graphdef, params = build()
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)
    ref = apply_model(graphdef, params, tokens)
    _, g16, p16 = build(dtype="bfloat16")
    out = apply_model(g16, p16, tokens)
    assert out.dtype == jnp.float32
    # Measured: max |bf16 - f32| = 0.019-0.025 std(logits) over 4 batches (std ~0.11). The
    # bound leaves 4x; the floor shows the compute did run in bf16 (f32 itself: ~1e-7).
    scale, err = float(jnp.std(ref)), float(jnp.max(jnp.abs(out - ref)))
    assert 1e-3 * scale < err < 0.1 * scale, (err, scale)


def test_bf16_params_build_bf16_leaves_and_compute_like_their_fp32_copy():
    # f32 compute over bf16 parameters: each kernel is cast up to f32 where it is read, so
    # the forward is the f32 model's over the same (bf16-representable) values.
    cfg, g16, p16 = build(param_dtype="bfloat16")
    leaves = jax.tree.leaves(p16)
    assert sum(x.size for x in leaves) == count_params(cfg)
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)
    out = apply_model(g16, p16, tokens)
    assert out.dtype == jnp.float32
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)
    ref = apply_model(abstract_params(family_config())[0], p32, tokens)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "mesh_shape", [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=8, tensor=1)]
)
def test_sharded_forward_equals_single_device(devices, mesh_shape):
    cfg, graphdef, params = build()
    mesh = parallel.make_mesh(mesh_shape)
    _, sharded_params, shardings = init_params(cfg, mesh, DEFAULT_RULES, 0)
    assert any(
        len(s.device_set) > 1 and s.spec != jax.sharding.PartitionSpec()
        for s in jax.tree.leaves(shardings)
    )
    tokens = jax.random.randint(jax.random.key(1), (8, 8), 0, cfg.vocab_size)
    ref = apply_model(graphdef, params, tokens)
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        out = jax.jit(lambda p, t: apply_model(graphdef, p, t))(sharded_params, tokens)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_logical_to_spec_uses_each_mesh_axis_once_and_only_where_it_divides(devices):
    mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
    spec = parallel.logical_to_spec(("batch", "length", "embed"), (8, 4, 6), mesh, DEFAULT_RULES)
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
    spec = parallel.logical_to_spec(("vocab", "embed"), (7, 6), mesh, DEFAULT_RULES)
    assert spec == jax.sharding.PartitionSpec(None, "fsdp")
    with pytest.raises(ValueError, match="no rule for logical axis 'nope'"):
        parallel.logical_to_spec(("nope",), (4,), mesh, DEFAULT_RULES)
    with pytest.raises(ValueError, match="config.mesh"):
        parallel.make_mesh(dict(data=3, fsdp=-1, tensor=1))


def test_scan_unroll_unrolls_the_layer_scan_with_the_same_numbers():
    cfg, graphdef, params = build()
    _, unrolled, _ = build(scan_unroll=2)
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg.vocab_size)

    def loss(graphdef):
        return lambda p: jnp.mean(token_logprobs(apply_model(graphdef, p, tokens), tokens))

    def scans(graphdef):
        eqns = jax.make_jaxpr(loss(graphdef))(params).eqns
        return [e.params["unroll"] for e in eqns if e.primitive.name == "scan"]

    assert scans(graphdef) == [1] and scans(unrolled) == [2]
    want, got = (
        jax.value_and_grad(loss(graphdef))(params),
        jax.value_and_grad(loss(unrolled))(params),
    )
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    _, bad, _ = build(scan_unroll=0)
    with pytest.raises(ValueError, match=r"config\.model\.scan_unroll=0; expected an integer >= 1"):
        apply_model(bad, params, tokens)
