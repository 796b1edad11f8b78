"""Fused attention (`config.model.attention`): splash (in Pallas's interpreter on this CPU)
and the cuDNN call's arguments (run through jax's XLA implementation) against the reference.

The splash checks run the whole model on an 8-device mesh, sharded by the default rules, so
shard_map, the layer scan (a lax.cond between the local and global kernels), packing,
padding to the kernel's block and the backward pass are all exercised. Padding positions
(segment 0) are left out: the kernels and the reference treat them differently, and no loss
reads them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax import parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.models import apply_model, init_params
from align_jax.models.attention import check_attention, cudnn_attention

SMALL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64)
VARIANTS = {
    "llama_gqa": {},
    # Gemma 2: soft-capped attention logits, its own query scale, local/global layers.
    "gemma2_local_global": dict(
        attn_logit_softcap=5.0, query_scale=0.3, sliding_window=6, sliding_pattern=2
    ),
    "mistral_all_local": dict(sliding_window=5, sliding_pattern=0),
}


def packed_batch(rows=8, length=40, seed=0):
    """Rows of 1-3 packed documents, some ending in padding; positions restart per document."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, SMALL["vocab_size"], (rows, length))
    segments = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for r in range(rows):
        cuts = np.sort(rng.choice(np.arange(3, length - 3), rng.integers(0, 3), replace=False))
        end = length - rng.integers(0, 8)
        for s, (a, b) in enumerate(zip([0, *cuts], [*cuts, end], strict=True), start=1):
            segments[r, a:b] = s
            positions[r, a:b] = np.arange(b - a)
    return tuple(jnp.asarray(x) for x in (tokens, positions, segments))


def forward_and_grads(cfg, mesh, batch):
    """(logits, gradient of the mean real-token log-prob of the next token) on `mesh`."""
    tokens, positions, segments = batch
    graphdef, params, _ = init_params(cfg, mesh, DEFAULT_RULES, seed=0)
    real = segments > 0

    def loss(p):
        logits = apply_model(graphdef, p, tokens, positions, segments)
        logp = jax.nn.log_softmax(logits[:, :-1])
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
        weight = real[:, 1:] & (segments[:, 1:] == segments[:, :-1])
        return -(picked * weight).sum() / weight.sum(), logits

    with parallel.sharding_context(mesh, DEFAULT_RULES):
        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_splash_matches_the_reference_forward_and_gradients(devices, variant):
    mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
    batch = packed_batch()
    real = np.asarray(batch[2]) > 0
    ref_logits, ref_grads = forward_and_grads(
        model_config(**SMALL, **VARIANTS[variant]), mesh, batch
    )
    logits, grads = forward_and_grads(
        model_config(**SMALL, **VARIANTS[variant], attention="splash"), mesh, batch
    )
    np.testing.assert_allclose(logits[real], ref_logits[real], atol=2e-5, rtol=1e-5)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        ref = dict(jax.tree_util.tree_leaves_with_path(ref_grads))[path]
        np.testing.assert_allclose(g, ref, atol=1e-6, rtol=1e-4, err_msg=str(path))


def reference_attention(q, k, v, segment_ids, window):
    """Numpy attention: q [B, L, H, Dh] (pre-scaled), k/v [B, L, K, Dh]; causal, own segment,
    keys less than `window` tokens back. Returns [B, L, H, Dh]."""
    q, k, v, seg = (np.asarray(x, np.float64) for x in (q, k, v, segment_ids))
    _, length, heads, _ = q.shape
    group = heads // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("blhd,bmhd->bhlm", q, k)
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    allowed = (j <= i) & (i - j < (window or length + 1))
    allowed = allowed[None, None] & (seg[:, None, :, None] == seg[:, None, None, :])
    logits = np.where(allowed, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhlm,bmhd->blhd", probs, v)


@pytest.mark.parametrize("window", [None, 4])
def test_cudnn_call_arguments_give_causal_segmented_windowed_gqa_attention(window):
    rng = np.random.default_rng(1)
    b, length, heads, kv, dh = 2, 12, 4, 2, 8
    q, k, v = (
        jnp.asarray(rng.normal(size=(b, length, n, dh)), jnp.float32) for n in (heads, kv, kv)
    )
    segment_ids = jnp.asarray([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])
    out = cudnn_attention(q, k, v, segment_ids, window, implementation="xla")
    expected = reference_attention(q, k, v, segment_ids, window)
    real = np.asarray(segment_ids) > 0
    np.testing.assert_allclose(np.asarray(out)[real], expected[real], atol=1e-5)


def test_attention_settings_no_kernel_supports_are_one_line_errors(devices):
    with pytest.raises(ValueError, match="config.model.attention 'flash' is not one of xla"):
        check_attention(model_config(**SMALL, attention="flash"))
    with pytest.raises(ValueError, match="no logit soft-capping"):
        check_attention(
            model_config(**SMALL, attention="cudnn", dtype="bfloat16", attn_logit_softcap=50.0)
        )
    with pytest.raises(ValueError, match="needs config.model.dtype bfloat16 or float16"):
        check_attention(model_config(**SMALL, attention="cudnn"))
    # cuDNN on a CPU mesh: refused when the step is traced, naming the devices.
    cfg = model_config(**SMALL, attention="cudnn", dtype="bfloat16")
    mesh = parallel.make_mesh(dict(data=8, fsdp=1, tensor=1))
    graphdef, params, _ = init_params(cfg, mesh, DEFAULT_RULES, seed=0)
    tokens = jnp.zeros((8, 8), jnp.int32)
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU; this mesh's devices"):
            jax.jit(lambda p: apply_model(graphdef, p, tokens))(params)
