"""The transformer's building blocks: parameters, RMSNorm, RoPE, masks, projections, and the
attention, MLP and block modules that the training forward and the sampler's decode share.

One block type covers the Llama, Qwen and Gemma families: grouped-query attention (GQA) with
RoPE (plain, linear or Llama-3 scaled), RMSNorm (Gemma's (1 + w) form via `norm_offset`),
SwiGLU or GeGLU, optional qkv bias (Qwen2), qk-norm (Qwen3, Gemma 3), sandwich norms
(Gemma 2/3) and attention-logit soft-capping (Gemma 2). Weight layouts follow Hugging Face's
(split-half RoPE, `x @ W` kernels), so checkpoints convert by reshaping, never by permuting.

Modules built with `stack=(n,)` hold every parameter with a leading `layers` dimension (the
scanned form, `align_jax.models.transformer`); parameters carry logical axis names as `axes`
metadata (see `align_jax.parallel`). LoRA adapters are added to the kernels by
`align_jax.models.lora.add_adapters`; `linear` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.models.attention import Segments, check_attention, fused_attention
from align_jax.models.lora import add_adapters
from align_jax.parallel import constrain

_MASK_VALUE = -1e30  # finite, so fully masked (padding) rows give uniform weights, not NaN
# The window of a layer that attends globally: longer than any sequence.
_NO_WINDOW = 2**30


def jnp_dtype(name: str):
    """The jnp dtype of a config dtype name (`float32`, `bfloat16`, `float16`)."""
    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
    except KeyError:
        raise ValueError(
            f"config.model dtype '{name}' is not one of float32, bfloat16, float16"
        ) from None


def new_param(rngs, shape, axes, cfg, init: str) -> nnx.Param:
    """A `config.model.param_dtype` parameter: `normal` (std `init_std`), `ones` or zeros."""
    dtype = jnp_dtype(cfg.param_dtype)
    if init == "normal":
        value = cfg.init_std * jax.random.normal(rngs.params(), shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = jnp.zeros(shape, dtype)
    return nnx.Param(value, axes=tuple(axes))


class RMSNorm(nnx.Module):
    """`x / rms(x) * (offset + scale)`, computed in float32."""

    def __init__(self, dim: int, axis_name: str, cfg, rngs: nnx.Rngs, stack: Sequence[int] = ()):
        self.eps = cfg.norm_eps
        self.offset = cfg.norm_offset
        stack_axes = ("layers",) * len(stack)
        init = "zeros" if cfg.norm_offset else "ones"
        self.scale = new_param(rngs, (*stack, dim), (*stack_axes, axis_name), cfg, init)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


# --------------------------------------------------------------------------- RoPE and masks


def _plain_inv_freq(theta: float, dim: int) -> jax.Array:
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def rope_inv_freq(cfg) -> jax.Array:
    """Inverse frequencies, with Llama-3 scaling (arXiv 2407.21783) when configured."""
    inv_freq = _plain_inv_freq(cfg.rope_theta, cfg.head_dim)
    scaling = cfg.rope_scaling
    if scaling.type == "llama3":
        low_wavelen = scaling.original_max_position / scaling.low_freq_factor
        high_wavelen = scaling.original_max_position / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        mid = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        inv_freq = jnp.where(
            wavelen > low_wavelen,
            inv_freq / scaling.factor,
            jnp.where(wavelen < high_wavelen, inv_freq, mid),
        )
    elif scaling.type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.type != "none":
        raise ValueError(
            f"config.model.rope_scaling.type '{scaling.type}' is not one of none, linear, llama3"
        )
    return inv_freq


def layer_attention(cfg) -> tuple[jax.Array, jax.Array]:
    """Per-layer RoPE inverse frequencies [layers, Dh/2] and attention windows [layers].

    Scanned along with the stacked blocks, so local and global layers (Gemma 2/3) share one
    block definition. A global layer's window is `_NO_WINDOW`.
    """
    n = cfg.n_layers
    layer = jnp.arange(n)
    if cfg.sliding_window:
        pattern = cfg.sliding_pattern
        is_global = (layer + 1) % pattern == 0 if pattern else jnp.zeros(n, bool)
    else:
        is_global = jnp.ones(n, bool)
    windows = jnp.where(is_global, _NO_WINDOW, cfg.sliding_window).astype(jnp.int32)
    inv_freq = jnp.broadcast_to(rope_inv_freq(cfg), (n, cfg.head_dim // 2))
    if cfg.rope_local_theta:
        local = _plain_inv_freq(cfg.rope_local_theta, cfg.head_dim)
        inv_freq = jnp.where(is_global[:, None], inv_freq, local[None])
    return inv_freq, windows


def rope_tables(positions_bl: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) of the rotary angles, [..., B, L, 1, D/2] float32 (1: broadcast over heads).

    `inv_freq` [..., D/2]: leading dims (one row per layer) lead the tables."""
    lead = inv_freq.shape[:-1]
    inv = inv_freq.reshape(*lead, *(1,) * positions_bl.ndim, inv_freq.shape[-1])
    angles = (positions_bl[..., None].astype(jnp.float32) * inv)[..., None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions_bl: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Split-half rotary embedding (the Hugging Face layout). x: [B, L, N, D]."""
    return rotate(x, rope_tables(positions_bl, inv_freq))


def rotate(x: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
    """`apply_rope` from precomputed `rope_tables` (cos, sin) [B, L, 1, D/2]."""
    cos, sin = tables
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(segment_ids_bl: jax.Array) -> jax.Array:
    """Causal mask that also keeps packed documents apart: [B, 1, 1, L, L] booleans.

    Segment 0 marks padding; padding queries attend to nothing real (their outputs are
    never used), and no real query attends to padding.
    """
    length = segment_ids_bl.shape[1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    same = segment_ids_bl[:, :, None] == segment_ids_bl[:, None, :]
    real = (segment_ids_bl > 0)[:, None, :]
    return (causal[None] & same & real)[:, None, None]


def window_mask(cfg, mask: jax.Array, distance: jax.Array, window) -> jax.Array:
    """A sliding-window layer's mask: keys at a slot distance (query - key) below `window`."""
    return mask & (distance < window) if cfg.sliding_window else mask


# --------------------------------------------------------------------------- projections


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """`cap * tanh(x / cap)` (Gemma 2's logit soft-capping); `cap = 0` leaves x as it is."""
    return jnp.tanh(x / cap) * cap if cap else x


def dense(x: jax.Array, kernel: jax.Array, n_in: int = 1) -> jax.Array:
    """`x [..., *in] @ kernel [*in, *out]` computed as one 2-D matmul [tokens, in] @ [in, out].

    The same contraction as the einsum over the `n_in` trailing dims of `x`. Flattening the
    leading (batch, length) dims first matters for speed, not for the result: autodiff then
    forms the weight gradient as a plain [in, tokens] @ [tokens, out] product, where with
    two leading dims XLA:CPU first transposes the [tokens, out] activation gradient in a slow
    strided copy (tools/bench_train.py measured it at ~15% of a 25M-parameter train step).
    """
    lead, k_in, k_out = x.shape[: x.ndim - n_in], kernel.shape[:n_in], kernel.shape[n_in:]
    y = jnp.dot(
        x.reshape(-1, math.prod(k_in)),
        kernel.reshape(math.prod(k_in), math.prod(k_out)),
        preferred_element_type=_accumulation(),
    ).astype(x.dtype)
    return y.reshape(*lead, *k_out)


def _accumulation():
    """`preferred_element_type` of the model's matmuls: float32 on CPU, else the inputs'.

    XLA:CPU has no fast matmul with a bf16 result: a bf16 x bf16 -> bf16 product ran ~7x
    slower than the same product accumulated in f32 and rounded after (llama25m decode
    shapes, batch 16), and a bf16 llama25m train step 11% slower (tools/bench_train.py).
    Accelerators accumulate bf16 products in f32 themselves; there, asking for f32 would
    only turn the backward pass's bf16 cotangents into f32 ones. f32 models: no change."""
    return jnp.float32 if jax.default_backend() == "cpu" else None


def linear(module, name: str, x: jax.Array, n_in: int = 1) -> jax.Array:
    """`x @ <name>_kernel`, plus `scale * (x @ A) @ B` where a LoRA adapter sits on it."""
    y = dense(x, getattr(module, f"{name}_kernel")[...].astype(x.dtype), n_in)
    if hasattr(module, f"{name}_lora_a"):
        a = getattr(module, f"{name}_lora_a")[...].astype(x.dtype)
        b = getattr(module, f"{name}_lora_b")[...].astype(x.dtype)
        y = y + dense(dense(x, a, n_in) * jnp.asarray(module.lora_scale, x.dtype), b)
    return y


# --------------------------------------------------------------------------- modules


class Attention(nnx.Module):
    def __init__(self, cfg, rngs: nnx.Rngs, stack: Sequence[int] = ()):
        self.cfg = cfg
        d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        if h % k:
            raise ValueError(f"config.model: n_heads={h} is not a multiple of n_kv_heads={k}")
        check_attention(cfg)
        ly = ("layers",) * len(stack)
        self.q_kernel = new_param(
            rngs, (*stack, d, h, hd), (*ly, "embed", "heads", "head_dim"), cfg, "normal"
        )
        self.k_kernel = new_param(
            rngs, (*stack, d, k, hd), (*ly, "embed", "kv_heads", "head_dim"), cfg, "normal"
        )
        self.v_kernel = new_param(
            rngs, (*stack, d, k, hd), (*ly, "embed", "kv_heads", "head_dim"), cfg, "normal"
        )
        self.o_kernel = new_param(
            rngs, (*stack, h, hd, d), (*ly, "heads", "head_dim", "embed"), cfg, "normal"
        )
        if cfg.qkv_bias:
            bias_axes = {"q": (h, "heads"), "k": (k, "kv_heads"), "v": (k, "kv_heads")}
            for name, (n, axis) in bias_axes.items():
                bias = new_param(rngs, (*stack, n, hd), (*ly, axis, "head_dim"), cfg, "zeros")
                setattr(self, f"{name}_bias", bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, "head_dim", cfg, rngs, stack)
            self.k_norm = RMSNorm(hd, "head_dim", cfg, rngs, stack)
        add_adapters(self, cfg, rngs, len(stack))

    def project(self, x, name):
        """The `name` (q, k or v) projection of x [B, L, D]: [B, L, heads, Dh]."""
        y = linear(self, name, x)
        if self.cfg.qkv_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(x.dtype)
        return y

    def __call__(self, x, rope, mask, cache=None):
        """Attention over x's own keys, or, with a cache, over the cache's slots after writing
        x's keys and values at slots [index, index + L). `cache = (k, v, index)` is this
        layer's cache (keys [B, K, Dh, S], values [B, K, S, Dh]); `(k, v, index, layer)`
        is the whole stacked cache ([layers, ...] each) of which this is layer `layer`.
        Returns `(out, (k, v))`: the updated cache as given, or None without one.

        `mask`: a dense [B, 1, 1, L, S] boolean mask for the XLA reference, or, without a
        cache, `Segments` for the fused kernel `config.model.attention` names."""
        cfg = self.cfg
        q = constrain(self.project(x, "q"), ("batch", "length", "heads", "head_dim"))
        k = constrain(self.project(x, "k"), ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(self.project(x, "v"), ("batch", "length", "kv_heads", "head_dim"))
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, rope), rotate(k, rope)
        scale = cfg.query_scale if cfg.query_scale else cfg.head_dim**-0.5
        if isinstance(mask, Segments):  # a fused kernel (config.model.attention)
            out = fused_attention(cfg, q * jnp.asarray(scale, q.dtype), k, v, mask, _NO_WINDOW)
            out = constrain(out.astype(x.dtype), ("batch", "length", "heads", "head_dim"))
            return linear(self, "o", out, n_in=2), None
        # Heads-major layout: values [B, K, L, Dh], keys [B, K, L, Dh] or, in a cache,
        # [B, K, Dh, S] (slots last; see below).
        v = v.transpose(0, 2, 1, 3)
        new_cache = None
        if cache is None:
            k = k.transpose(0, 2, 1, 3)
            scores = "bkgld,bkmd->bkglm"
        else:
            # Only the new slots are written, in place. Cached keys are kept slots-last, so a
            # decode step's query-key product is a plain [G, Dh] @ [Dh, S] matmul per (row, KV
            # head); with [S, Dh] keys that product took ~3x as long on XLA:CPU (0.33 vs 0.11
            # ms a layer, llama25m, batch 16, 192 slots, profiled). Values stay [S, Dh]:
            # probs [G, S] @ values [S, Dh].
            k_cache, v_cache, index, *layer = cache  # layer: [] or [index in the stack]
            lead, at = (None,) * len(layer), (*layer, 0, 0)
            k_new = k.transpose(0, 2, 3, 1).astype(k_cache.dtype)[lead]
            k = jax.lax.dynamic_update_slice(k_cache, k_new, (*at, 0, index))
            v_new = v.astype(v_cache.dtype)[lead]
            v = jax.lax.dynamic_update_slice(v_cache, v_new, (*at, index, 0))
            new_cache = (k, v)
            if layer:
                k, v = k[layer[0]], v[layer[0]]
            # Attend in the cache's dtype where it is wider than the queries' (the CPU
            # sampler keeps an f32 cache under bf16 compute): casting the few new queries
            # up is cheap, casting the whole cache down every step is not.
            if jnp.finfo(k.dtype).bits > jnp.finfo(q.dtype).bits:
                q = q.astype(k.dtype)
            else:
                k, v = k.astype(q.dtype), v.astype(q.dtype)
            scores = "bkgld,bkdm->bkglm"
        b, length, h, hd = q.shape
        kv = cfg.n_kv_heads
        groups = h // kv
        # Heads-major layout: queries [B, K, G, L, Dh] (the G query heads that share KV head K
        # next to each other), keys and values [B, K, L, Dh]. Both products below are then
        # batched over (B, K) with the head dim last, so neither the forward nor the backward
        # needs to transpose an [L, L] score matrix; only these small per-token tensors move.
        q = q.reshape(b, length, kv, groups, hd) * jnp.asarray(scale, q.dtype)
        q = q.transpose(0, 2, 3, 1, 4)
        logits = jnp.einsum(scores, q, k, preferred_element_type=_accumulation())
        logits = logits.astype(jnp.float32)
        logits = softcap(logits, cfg.attn_logit_softcap)
        logits = jnp.where(mask, logits, _MASK_VALUE)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkglm,bkmd->bkgld", probs, v, preferred_element_type=_accumulation())
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, hd).astype(x.dtype)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        return linear(self, "o", out, n_in=2), new_cache


class MLP(nnx.Module):
    """Gated MLP: SwiGLU (`silu`) or GeGLU (`gelu`, tanh approximation as in Gemma)."""

    def __init__(self, cfg, rngs: nnx.Rngs, stack: Sequence[int] = ()):
        if cfg.activation not in ("silu", "gelu"):
            raise ValueError(f"config.model.activation '{cfg.activation}' is not one of silu, gelu")
        self.activation = cfg.activation
        d, f = cfg.d_model, cfg.mlp_dim
        ly = ("layers",) * len(stack)
        self.gate_kernel = new_param(rngs, (*stack, d, f), (*ly, "embed", "mlp"), cfg, "normal")
        self.up_kernel = new_param(rngs, (*stack, d, f), (*ly, "embed", "mlp"), cfg, "normal")
        self.down_kernel = new_param(rngs, (*stack, f, d), (*ly, "mlp", "embed"), cfg, "normal")
        add_adapters(self, cfg, rngs, len(stack))

    def __call__(self, x):
        gate = linear(self, "gate", x)
        up = linear(self, "up", x)
        act = (
            jax.nn.silu(gate) if self.activation == "silu" else jax.nn.gelu(gate, approximate=True)
        )
        hidden = constrain(act * up, ("batch", "length", "mlp"))
        return linear(self, "down", hidden)


class Block(nnx.Module):
    def __init__(self, cfg, rngs: nnx.Rngs, stack: Sequence[int] = ()):
        self.post_norms = cfg.post_norms
        self.attn_norm = RMSNorm(cfg.d_model, "embed", cfg, rngs, stack)
        self.attn = Attention(cfg, rngs, stack)
        self.mlp_norm = RMSNorm(cfg.d_model, "embed", cfg, rngs, stack)
        self.mlp = MLP(cfg, rngs, stack)
        if cfg.post_norms:
            self.post_attn_norm = RMSNorm(cfg.d_model, "embed", cfg, rngs, stack)
            self.post_mlp_norm = RMSNorm(cfg.d_model, "embed", cfg, rngs, stack)

    def __call__(self, x, rope, mask, cache=None):
        """`rope`: the layer's `rope_tables` (cos, sin) for x's positions."""
        h, new_cache = self.attn(self.attn_norm(x), rope, mask, cache)
        if self.post_norms:
            h = self.post_attn_norm(h)
        x = constrain(x + h, ("batch", "length", "embed"))
        h = self.mlp(self.mlp_norm(x))
        if self.post_norms:
            h = self.post_mlp_norm(h)
        return constrain(x + h, ("batch", "length", "embed")), new_cache
