"""Decoder-only transformer in Flax NNX, with switches for the Llama, Qwen and Gemma families.

One block type covers them all: grouped-query attention (GQA) with RoPE (plain, linear or
Llama-3 scaled), RMSNorm (Gemma's (1 + w) form via `norm_offset`), SwiGLU or GeGLU, optional
qkv bias (Qwen2), qk-norm (Qwen3, Gemma 3), sandwich norms (Gemma 2/3), embedding scaling
and logit soft-capping (Gemma 2). Weight layouts follow Hugging Face's (split-half RoPE, `x @ W`
kernels), so checkpoints convert by reshaping, never by permuting.

Layers are stacked: every block parameter has a leading `layers` dimension and the forward
pass is one `jax.lax.scan`, so compile time does not grow with depth. Rematerialisation is
a policy on the scanned body. Parameters carry logical axis names as `axes` metadata; see
`align_jax.parallel` for how they map to the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.models.lora import TARGETS as LORA_TARGETS
from align_jax.models.lora import count_adapter_params
from align_jax.models.lora import settings as lora_settings
from align_jax.parallel import constrain

_REMAT_POLICIES = {
    "full": None,  # save nothing; recompute the block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_MASK_VALUE = -1e30  # finite, so fully masked (padding) rows give uniform weights, not NaN


def jnp_dtype(name: str):
    """The jnp dtype of a config dtype name (`float32`, `bfloat16`, `float16`)."""
    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
    except KeyError:
        raise ValueError(
            f"config.model dtype '{name}' is not one of float32, bfloat16, float16"
        ) from None


def _param(rngs, shape, axes, cfg, init: str) -> nnx.Param:
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
        self.scale = _param(rngs, (*stack, dim), (*stack_axes, axis_name), cfg, init)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


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


# The window of a layer that attends globally: longer than any sequence.
_NO_WINDOW = 2**30


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


def _softcap(x: jax.Array, cap: float) -> jax.Array:
    return jnp.tanh(x / cap) * cap if cap else x


def _dense(x: jax.Array, kernel: jax.Array, n_in: int = 1) -> jax.Array:
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


def _add_adapters(module, cfg, rngs, n_stack: int) -> None:
    """LoRA adapters on the module's kernels that `config.model.lora.targets` names
    (align_jax/models/lora.py): A [*stack, *in, rank] drawn like PEFT's default
    (kaiming-uniform with a = sqrt(5), i.e. U(+-1 / sqrt(fan_in))) and B [*stack, rank, *out]
    zero, so a fresh adapter leaves the model unchanged."""
    lora = lora_settings(cfg)
    if lora is None:
        return
    module.lora_scale = lora.scale
    for name in lora.targets:
        kernel = getattr(module, f"{name}_kernel", None)
        if kernel is None:
            continue
        cut = n_stack + LORA_TARGETS[name]
        shape, axes = kernel[...].shape, tuple(kernel.get_metadata()["axes"])
        bound = 1.0 / math.sqrt(math.prod(shape[n_stack:cut]))
        a = jax.random.uniform(
            rngs.params(), (*shape[:cut], lora.rank), jnp_dtype(cfg.param_dtype), -bound, bound
        )
        setattr(module, f"{name}_lora_a", nnx.Param(a, axes=(*axes[:cut], None)))
        b_shape = (*shape[:n_stack], lora.rank, *shape[cut:])
        b_axes = (*axes[:n_stack], None, *axes[cut:])
        setattr(module, f"{name}_lora_b", _param(rngs, b_shape, b_axes, cfg, "zeros"))


def _linear(module, name: str, x: jax.Array, n_in: int = 1) -> jax.Array:
    """`x @ <name>_kernel`, plus `scale * (x @ A) @ B` where a LoRA adapter sits on it."""
    y = _dense(x, getattr(module, f"{name}_kernel")[...].astype(x.dtype), n_in)
    if hasattr(module, f"{name}_lora_a"):
        a = getattr(module, f"{name}_lora_a")[...].astype(x.dtype)
        b = getattr(module, f"{name}_lora_b")[...].astype(x.dtype)
        y = y + _dense(_dense(x, a, n_in) * jnp.asarray(module.lora_scale, x.dtype), b)
    return y


class Attention(nnx.Module):
    def __init__(self, cfg, rngs: nnx.Rngs, stack: Sequence[int] = ()):
        self.cfg = cfg
        d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        if h % k:
            raise ValueError(f"config.model: n_heads={h} is not a multiple of n_kv_heads={k}")
        ly = ("layers",) * len(stack)
        self.q_kernel = _param(
            rngs, (*stack, d, h, hd), (*ly, "embed", "heads", "head_dim"), cfg, "normal"
        )
        self.k_kernel = _param(
            rngs, (*stack, d, k, hd), (*ly, "embed", "kv_heads", "head_dim"), cfg, "normal"
        )
        self.v_kernel = _param(
            rngs, (*stack, d, k, hd), (*ly, "embed", "kv_heads", "head_dim"), cfg, "normal"
        )
        self.o_kernel = _param(
            rngs, (*stack, h, hd, d), (*ly, "heads", "head_dim", "embed"), cfg, "normal"
        )
        if cfg.qkv_bias:
            self.q_bias = _param(rngs, (*stack, h, hd), (*ly, "heads", "head_dim"), cfg, "zeros")
            self.k_bias = _param(rngs, (*stack, k, hd), (*ly, "kv_heads", "head_dim"), cfg, "zeros")
            self.v_bias = _param(rngs, (*stack, k, hd), (*ly, "kv_heads", "head_dim"), cfg, "zeros")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, "head_dim", cfg, rngs, stack)
            self.k_norm = RMSNorm(hd, "head_dim", cfg, rngs, stack)
        _add_adapters(self, cfg, rngs, len(stack))

    def _project(self, x, name):
        y = _linear(self, name, x)  # [B, L, N, Dh]
        if self.cfg.qkv_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(x.dtype)
        return y

    def __call__(self, x, rope, mask, cache=None):
        """Attention over x's own keys, or, with a cache, over the cache's slots after writing
        x's keys and values at slots [index, index + L). `cache = (k, v, index)` is this
        layer's cache (keys [B, K, Dh, S], values [B, K, S, Dh]); `(k, v, index, layer)`
        is the whole stacked cache ([layers, ...] each) of which this is layer `layer`.
        Returns `(out, (k, v))`: the updated cache as given, or None without one."""
        cfg = self.cfg
        q = constrain(self._project(x, "q"), ("batch", "length", "heads", "head_dim"))
        k = constrain(self._project(x, "k"), ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(self._project(x, "v"), ("batch", "length", "kv_heads", "head_dim"))
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, rope), rotate(k, rope)
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
        scale = cfg.query_scale if cfg.query_scale else cfg.head_dim**-0.5
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
        logits = _softcap(logits, cfg.attn_logit_softcap)
        logits = jnp.where(mask, logits, _MASK_VALUE)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkglm,bkmd->bkgld", probs, v, preferred_element_type=_accumulation())
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, hd).astype(x.dtype)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        return _linear(self, "o", out, n_in=2), new_cache


class MLP(nnx.Module):
    """Gated MLP: SwiGLU (`silu`) or GeGLU (`gelu`, tanh approximation as in Gemma)."""

    def __init__(self, cfg, rngs: nnx.Rngs, stack: Sequence[int] = ()):
        if cfg.activation not in ("silu", "gelu"):
            raise ValueError(f"config.model.activation '{cfg.activation}' is not one of silu, gelu")
        self.activation = cfg.activation
        d, f = cfg.d_model, cfg.mlp_dim
        ly = ("layers",) * len(stack)
        self.gate_kernel = _param(rngs, (*stack, d, f), (*ly, "embed", "mlp"), cfg, "normal")
        self.up_kernel = _param(rngs, (*stack, d, f), (*ly, "embed", "mlp"), cfg, "normal")
        self.down_kernel = _param(rngs, (*stack, f, d), (*ly, "mlp", "embed"), cfg, "normal")
        _add_adapters(self, cfg, rngs, len(stack))

    def __call__(self, x):
        gate = _linear(self, "gate", x)
        up = _linear(self, "up", x)
        act = (
            jax.nn.silu(gate) if self.activation == "silu" else jax.nn.gelu(gate, approximate=True)
        )
        hidden = constrain(act * up, ("batch", "length", "mlp"))
        return _linear(self, "down", hidden)


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


class Transformer(nnx.Module):
    """`model(tokens [B, L], positions, segment_ids) -> logits [B, L, V]` (float32)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embedding = _param(
            rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg, "normal"
        )
        self.layers = Block(cfg, rngs, stack=(cfg.n_layers,))
        self.final_norm = RMSNorm(cfg.d_model, "embed", cfg, rngs)
        if cfg.head not in ("lm", "scalar"):
            raise ValueError(f"config.model.head '{cfg.head}' is not one of lm, scalar")
        if cfg.head == "scalar":
            # Reward and value models: one score per token, read where the objective wants.
            self.score_head = _param(rngs, (cfg.d_model, 1), ("embed", None), cfg, "normal")
        elif not cfg.tie_embeddings:
            self.lm_head = _param(
                rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg, "normal"
            )

    def hidden_states(self, tokens_bl, positions_bl=None, segment_ids_bl=None) -> jax.Array:
        """Final-norm hidden states [B, L, D]: what scalar heads (reward, value) read."""
        if positions_bl is None:
            positions_bl = jnp.broadcast_to(jnp.arange(tokens_bl.shape[1]), tokens_bl.shape)
        if segment_ids_bl is None:
            segment_ids_bl = jnp.ones_like(tokens_bl)
        x = self._layers(tokens_bl, positions_bl, attention_mask(segment_ids_bl))
        return self.final_norm(x)

    def layer_blocks(self) -> list[Block]:
        """The stacked blocks as one `Block` per layer, their parameters sliced out (copied)
        once: what `extend` runs unrolled over a per-layer cache."""
        graphdef, stacked = nnx.split(self.layers)
        return [
            nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
            for i in range(self.cfg.n_layers)
        ]

    def extend(self, tokens_bt, positions_bt, kv_valid_bs, cache, index, blocks=None, rope=None):
        """Runs T new tokens against a KV cache: the sampler's prefill (T = prompt length)
        and decode (T = 1) step.

        The new tokens take cache slots [index, index + T). `kv_valid_bs` [B, S] marks the
        slots that hold real tokens (left padding of short prompts is 0), the new ones
        included; a query sees valid slots up to its own. Returns the final-norm hidden
        states [B, T, D] and the updated cache.

        The cache's layout (`init_cache`) picks how the layers run:
        - a list of per-layer {"k", "v"}: unrolled, over `blocks` (`layer_blocks()`, sliced
          here when None; a decode loop slices once and passes them). On XLA:CPU a llama25m
          decode step took ~6.2 ms this way against ~8 ms scanned, where each step re-sliced
          every layer's weights and cache (tools/bench_sample.py). The price: a copy of the
          block weights while sampling, and compile time that grows with depth.
        - one stacked {"k", "v"} ([layers, ...]): scanned like the training forward, the
          cache in the scan's carry and each layer writing only its new slots in place.

        `rope`: every layer's rotary tables for these positions, `rope_tables(positions_bt,
        layer_attention(cfg)[0])` ([layers, B, T, 1, Dh/2] each), or None: each layer
        computes its own (a prefill's tables for all layers at once could be large).
        A decode loop passes tables it made outside the step (the sampler: in the step
        before, through the loop's carry): made in the step that reads them, XLA fuses the
        cos/sin into every head's rotation and recomputes them per element (~3% of a llama25m
        decode call on XLA:CPU, batch 16).
        """
        cfg = self.cfg
        stacked = isinstance(cache, dict)
        t, s = tokens_bt.shape[1], (cache if stacked else cache[0])["v"].shape[-2]
        query_slot = index + jnp.arange(t)
        key_slot = jnp.arange(s)
        causal = key_slot[None, :] <= query_slot[:, None]  # [T, S]
        mask = (causal[None] & (kv_valid_bs[:, None, :] > 0))[:, None, None]
        distance = query_slot[:, None] - key_slot[None, :]  # [T, S]
        if stacked:
            x, (k, v) = self._layers(
                tokens_bt, positions_bt, mask, distance, (cache["k"], cache["v"], index), rope
            )
            return self.final_norm(x), {"k": k, "v": v}
        inv_freq_ld, window_l = layer_attention(cfg)
        blocks = self.layer_blocks() if blocks is None else blocks
        x = self._embed(tokens_bt)
        new_cache = []
        for layer, block in enumerate(blocks):
            layer_mask = self._window_mask(mask, distance, window_l[layer])
            layer_cache = (cache[layer]["k"], cache[layer]["v"], index)
            if rope is None:
                layer_rope = rope_tables(positions_bt, inv_freq_ld[layer])
            else:
                layer_rope = (rope[0][layer], rope[1][layer])
            x, (k, v) = block(x, layer_rope, layer_mask, layer_cache)
            new_cache.append({"k": k, "v": v})
        return self.final_norm(x), new_cache

    def _window_mask(self, mask, distance, window):
        """A sliding-window layer's mask: keys at a slot distance below its window."""
        return mask & (distance < window) if self.cfg.sliding_window else mask

    def _embed(self, tokens_bl):
        cfg = self.cfg
        dtype = jnp_dtype(cfg.dtype)
        # Gather from a table replicated over `vocab` (kept split over `embed`): a gather from
        # a vocab-split table makes GSPMD replicate it anyway, with a warning per call.
        table = constrain(self.embedding[...], (None, "embed"))
        x = jnp.take(table, tokens_bl, axis=0).astype(dtype)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
        return constrain(x, ("batch", "length", "embed"))

    def _layers(self, tokens_bl, positions_bl, mask, distance=None, cache=None, rope=None):
        """Embedding and the scanned blocks: the residual stream [B, L, D], or, with a
        stacked `cache = (k, v, index)` riding in the scan's carry, `(x, (k, v))`.
        `rope`: all layers' rotary tables (see `extend`); computed per layer when None.

        `distance` [L, S] (query slot - key slot) places keys in sliding windows; it
        defaults to token-index distance, the position distance within a packed document.
        """
        cfg = self.cfg
        x = self._embed(tokens_bl)
        inv_freq_ld, window_l = layer_attention(cfg)
        if distance is None:
            slots = jnp.arange(tokens_bl.shape[1])
            distance = slots[:, None] - slots[None, :]

        graphdef, stacked = nnx.split(self.layers)

        def body(carry, xs):
            x, kv = carry
            layer_state, layer_rope, window, layer = xs
            layer_cache = None if kv is None else (*kv, cache[2], layer)
            block = nnx.merge(graphdef, layer_state)
            layer_mask = self._window_mask(mask, distance, window)
            if rope is None:  # layer_rope: this layer's inverse frequencies
                layer_rope = rope_tables(positions_bl, layer_rope)
            return block(x, layer_rope, layer_mask, layer_cache), None

        if cfg.remat != "none":
            if cfg.remat not in _REMAT_POLICIES:
                raise ValueError(
                    f"config.model.remat '{cfg.remat}' is not one of none, "
                    f"{', '.join(_REMAT_POLICIES)}"
                )
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
        kv = None if cache is None else cache[:2]
        xs = (stacked, inv_freq_ld if rope is None else rope, window_l, jnp.arange(cfg.n_layers))
        x, kv = jax.lax.scan(body, (x, kv), xs)[0]
        return x if cache is None else (x, kv)

    def logits(self, hidden_bld: jax.Array) -> jax.Array:
        cfg = self.cfg
        dtype = hidden_bld.dtype
        if cfg.tie_embeddings:
            logits = _dense(hidden_bld, self.embedding[...].astype(dtype).T)
        else:
            logits = _dense(hidden_bld, self.lm_head[...].astype(dtype))
        logits = _softcap(logits.astype(jnp.float32), cfg.final_logit_softcap)
        return constrain(logits, ("batch", "length", "vocab"))

    def scores(self, hidden_bld: jax.Array) -> jax.Array:
        """Scalar-head scores [B, L] (float32) of `config.model.head = "scalar"` models."""
        kernel = self.score_head[...].astype(hidden_bld.dtype)
        return (hidden_bld @ kernel)[..., 0].astype(jnp.float32)

    def __call__(self, tokens_bl, positions_bl=None, segment_ids_bl=None) -> jax.Array:
        """Logits [B, L, V], or scores [B, L] for a scalar-head model."""
        hidden = self.hidden_states(tokens_bl, positions_bl, segment_ids_bl)
        return self.scores(hidden) if self.cfg.head == "scalar" else self.logits(hidden)


_CACHE_AXES = {
    "k": ("batch", "kv_heads", "head_dim", "length"),
    "v": ("batch", "kv_heads", "length", "head_dim"),
}


def constrain_cache(cache):
    """`cache` (either `init_cache` layout) constrained to its logical-axis shardings."""
    if isinstance(cache, dict):
        return {n: constrain(cache[n], ("layers", *_CACHE_AXES[n])) for n in ("k", "v")}
    return [{n: constrain(layer[n], _CACHE_AXES[n]) for n in ("k", "v")} for layer in cache]


def init_cache(cfg, batch: int, length: int, dtype=None, *, stacked: bool = False):
    """An empty KV cache of `length` slots: keys [B, kv_heads, head_dim, S] (slots last) and
    values [B, kv_heads, S, head_dim], as a list of per-layer {"k", "v"} or, `stacked`, one
    {"k", "v"} with a leading `layers` dimension (see `Transformer.extend`)."""
    dtype = dtype or jnp_dtype(cfg.dtype)
    kv, hd, n = cfg.n_kv_heads, cfg.head_dim, cfg.n_layers
    shapes = {"k": (batch, kv, hd, length), "v": (batch, kv, length, hd)}
    if stacked:
        return constrain_cache({k: jnp.zeros((n, *s), dtype) for k, s in shapes.items()})
    return constrain_cache([{k: jnp.zeros(s, dtype) for k, s in shapes.items()} for _ in range(n)])


def count_params(cfg, *, include_embeddings: bool = True, include_lora: bool = True) -> int:
    d, h, k, hd, f, n = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.mlp_dim,
        cfg.n_layers,
    )
    per_layer = d * h * hd * 2 + d * k * hd * 2 + 3 * d * f + 2 * d
    per_layer += (h + 2 * k) * hd if cfg.qkv_bias else 0
    per_layer += 2 * hd if cfg.qk_norm else 0
    per_layer += 2 * d if cfg.post_norms else 0
    total = n * per_layer + d
    if cfg.head == "scalar":
        total += d + (cfg.vocab_size * d if include_embeddings else 0)
    elif include_embeddings:
        total += cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return total + (count_adapter_params(cfg) if include_lora else 0)


def train_flops_per_token(cfg, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward), PaLM's count (arXiv 2204.02311).

    6 * (matmul parameters, the LM head included, the embedding lookup not) plus
    12 * layers * heads * head_dim * seq_len for the attention scores and values.
    A LoRA run counts the same as a full fine-tune of its model (adapters left out, though it
    skips the frozen kernels' weight gradients), so MFU compares tokens/s across the two.
    """
    head = cfg.vocab_size * cfg.d_model if cfg.head == "lm" else 0
    matmul_params = count_params(cfg, include_embeddings=False, include_lora=False) + head
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 6.0 * matmul_params + attention
