"""Fused attention kernels for the training forward: `config.model.attention`.

- `xla` (default): the reference, `layers.Attention`'s two einsums around a softmax over a
  dense [L, L] mask. Runs everywhere.
- `splash`: the Pallas splash-attention kernel of `jax.experimental.pallas.ops.tpu`
  (block-sparse flash attention: causal and sliding-window masks skip whole blocks, segment
  ids keep packed documents apart, GQA, logit soft-capping). Compiled for TPU meshes; on any
  other platform the kernel runs in Pallas's interpreter, exact but slow: a way to check
  numerics on a CPU, not to train.
- `cudnn`: cuDNN's fused flash attention through `jax.nn.dot_product_attention` on NVIDIA
  GPUs (bf16 or fp16; no logit soft-capping).

Only the forward without a KV cache (training, scoring, reference log-probs) takes the
fused path; the sampler's cached prefill and decode keep the XLA reference. Both kernels see
what the dense mask says: a query attends to earlier keys of its own segment (within its
layer's window). Padding (segment 0) queries attend to padding keys here, where the
reference gives them uniform weights; their outputs are never read.

Splash is a Pallas call, which GSPMD cannot split: it runs under `shard_map`, each device
holding its batch rows and query/KV heads whole-length, as the rules table splits them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import (
    BlockSizes,
    CausalMask,
    LocalMask,
    MultiHeadMask,
    SegmentIds,
    make_splash_mha,
)
from jax.sharding import PartitionSpec

from align_jax import parallel

ATTENTION_KINDS = ("xla", "splash", "cudnn")
# Splash's tiles: the longest of these that divides the (padded) length.
_SPLASH_BLOCKS = (512, 256, 128)


class Segments(NamedTuple):
    """What a fused kernel takes in place of the dense mask: segment ids [B, L] (0 marks
    padding) and the layer's sliding window (a traced scalar inside the layer scan; a
    value at or above `no_window` is a global layer)."""

    ids: jax.Array
    window: jax.Array | int | None  # None until the layer scan sets it


def check_attention(cfg) -> None:
    """One-line errors for an attention setting no kernel supports, before tracing."""
    kind = cfg.get("attention", "xla")
    if kind not in ATTENTION_KINDS:
        raise ValueError(
            f"config.model.attention '{kind}' is not one of {', '.join(ATTENTION_KINDS)}"
        )
    if kind == "cudnn":
        if cfg.attn_logit_softcap:
            raise ValueError(
                "config.model.attention 'cudnn': cuDNN's fused attention has no logit "
                f"soft-capping (attn_logit_softcap={cfg.attn_logit_softcap}); use splash or xla"
            )
        if cfg.dtype not in ("bfloat16", "float16"):
            raise ValueError(
                f"config.model.attention 'cudnn' needs config.model.dtype bfloat16 or float16, "
                f"not {cfg.dtype}"
            )


def fused_attention(cfg, q, k, v, segments: Segments, no_window: int) -> jax.Array:
    """Attention of queries [B, L, H, Dh] (already scaled and rotated) over keys and values
    [B, L, K, Dh] with the configured kernel: [B, L, H, Dh]."""
    kind = cfg.attention
    platform = _platform()
    if kind == "cudnn" and platform != "gpu":
        raise ValueError(
            f"config.model.attention 'cudnn' needs an NVIDIA GPU; this mesh's devices are "
            f"{platform} (use xla, or splash on TPU)"
        )
    if kind == "splash":
        kernel = functools.partial(splash_attention, cfg, interpret=platform != "tpu")
    else:
        kernel = functools.partial(cudnn_attention, implementation="cudnn")
    if not cfg.sliding_window:
        return kernel(q, k, v, segments.ids, None)
    local = functools.partial(kernel, window=cfg.sliding_window)
    if not cfg.sliding_pattern:  # every layer slides (Mistral)
        return local(q, k, v, segments.ids)
    # Local and global layers alternate inside one scanned block, so the window is a traced
    # value while kernel masks are static: both kernels are compiled, one runs per layer.
    return jax.lax.cond(
        segments.window < no_window,
        local,
        functools.partial(kernel, window=None),
        q,
        k,
        v,
        segments.ids,
    )


def _platform() -> str:
    """The platform of the active mesh's devices (the planner's TPU topology on a CPU host),
    else of the default backend."""
    try:
        mesh, _ = parallel.current()
        platform = mesh.devices.flat[0].platform
    except RuntimeError:
        platform = jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


# --------------------------------------------------------------------------- cuDNN


def cudnn_attention(q, k, v, segment_ids, window, *, implementation: str) -> jax.Array:
    """`jax.nn.dot_product_attention` with the segment mask; `implementation="xla"` runs the
    same call anywhere (the tests check the argument mapping that way)."""
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # [B, 1, L, L]
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=same,
        scale=1.0,
        is_causal=True,
        local_window_size=None if window is None else (window - 1, 0),
        implementation=implementation,
    ).astype(q.dtype)


# --------------------------------------------------------------------------- splash


def splash_attention(cfg, q, k, v, segment_ids, window, *, interpret: bool) -> jax.Array:
    """Splash attention under `shard_map`: rows split as `batch`, heads as `heads` /
    `kv_heads` in the rules table (or not at all where the two disagree), length whole."""
    batch, length = segment_ids.shape
    padded = -(-length // _SPLASH_BLOCKS[-1]) * _SPLASH_BLOCKS[-1]
    if padded != length:  # padding keys: segment 0, which no real query attends to
        q, k, v = (jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - length)))
    # Heads-major, as the kernel takes them: [B, H, L, Dh].
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    soft_cap = cfg.attn_logit_softcap or None

    def local_attention(q, k, v, segment_ids):
        kernel = _splash_kernel(q.shape[1], padded, window, soft_cap, interpret)

        def one_row(q, k, v, ids):
            return kernel(q, k, v, segment_ids=SegmentIds(q=ids, kv=ids))

        return jax.vmap(one_row)(q, k, v, segment_ids)

    try:
        mesh, rules = parallel.current()
    except RuntimeError:
        out = local_attention(q, k, v, segment_ids)
    else:
        q_spec, kv_spec, ids_spec = _splash_specs(mesh, rules, q.shape, k.shape)
        out = jax.shard_map(
            local_attention,
            mesh=mesh,
            in_specs=(q_spec, kv_spec, kv_spec, ids_spec),
            out_specs=q_spec,
            check_vma=False,
        )(q, k, v, segment_ids)
    return out.transpose(0, 2, 1, 3)[:, :length].astype(q.dtype)


def _splash_specs(mesh, rules, q_shape, kv_shape):
    """PartitionSpecs of q [B, H, L, Dh], k/v [B, K, L, Dh] and segment ids [B, L]."""
    q_spec = parallel.logical_to_spec(("batch", "heads", None, None), q_shape, mesh, rules)
    kv_spec = parallel.logical_to_spec(("batch", "kv_heads", None, None), kv_shape, mesh, rules)
    if q_spec[1] != kv_spec[1]:
        # Each device's query heads must meet their own KV heads: split neither.
        q_spec = PartitionSpec(q_spec[0], None, None, None)
        kv_spec = PartitionSpec(kv_spec[0], None, None, None)
    return q_spec, kv_spec, PartitionSpec(q_spec[0], None)


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, length: int, window, soft_cap, interpret: bool):
    """A splash kernel for `heads` query heads over `length` tokens: causal, or causal
    within `window` tokens (the query's own included)."""
    shape = (length, length)
    if window is None:
        mask = CausalMask(shape)
    else:
        mask = LocalMask(shape, window_size=(window - 1, 0), offset=0)
    block = next(b for b in _SPLASH_BLOCKS if length % b == 0)
    sizes = BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    return make_splash_mha(
        MultiHeadMask([mask] * heads),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        attn_logits_soft_cap=soft_cap,
        interpret=interpret,
    )
