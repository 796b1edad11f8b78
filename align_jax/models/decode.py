"""Running a `Transformer` against a KV cache: the sampler's prefill and decode steps.

`extend` runs new tokens through the same blocks as the training forward
(`align_jax.models.layers.Block`; attention writes the new keys and values into the cache
and attends over its slots), in one of two layouts picked by the cache's form:

- per-layer (a list of {"k", "v"}, `init_cache(stacked=False)`): the layers run unrolled
  over blocks sliced out of the stacked weights once (`layer_blocks`). On XLA:CPU a llama25m
  decode step took ~6.2 ms this way against ~8 ms scanned, where each step re-sliced every
  layer's weights and cache (tools/bench_sample.py). The price: a copy of the block weights
  while sampling, and compile time that grows with depth. The sampler's CPU default.
- stacked (one {"k", "v"} with a leading `layers` dimension): scanned like the training
  forward (`Transformer.run_layers`), the cache in the scan's carry and each layer writing
  only its new slots in place. No weight copy, flat compile time: the accelerator default.

Cached keys are stored slots-last ([B, K, Dh, S]; values [B, K, S, Dh]): see `Attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.models.layers import Block, jnp_dtype, layer_attention, rope_tables, window_mask
from align_jax.parallel import constrain

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
    {"k", "v"} with a leading `layers` dimension (see `extend`)."""
    dtype = dtype or jnp_dtype(cfg.dtype)
    kv, hd, n = cfg.n_kv_heads, cfg.head_dim, cfg.n_layers
    shapes = {"k": (batch, kv, hd, length), "v": (batch, kv, length, hd)}
    if stacked:
        return constrain_cache({k: jnp.zeros((n, *s), dtype) for k, s in shapes.items()})
    return constrain_cache([{k: jnp.zeros(s, dtype) for k, s in shapes.items()} for _ in range(n)])


def grow_cache(cache, extra: int):
    """The cache (either layout) with `extra` more (empty) slots at the end: the keys' last
    axis, the values' second to last."""

    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths)

    def grow(layer):
        return {"k": pad(layer["k"], -1), "v": pad(layer["v"], -2)}

    return constrain_cache(grow(cache) if isinstance(cache, dict) else [grow(c) for c in cache])


def layer_blocks(model) -> list[Block]:
    """The model's stacked blocks as one `Block` per layer, their parameters sliced out
    (copied) once: what `extend` runs unrolled over a per-layer cache."""
    graphdef, stacked = nnx.split(model.layers)
    return [
        nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
        for i in range(model.cfg.n_layers)
    ]


def extend(model, tokens_bt, positions_bt, kv_valid_bs, cache, index, blocks=None, rope=None):
    """Runs T new tokens of `model` (a `Transformer`) against a KV cache: the sampler's
    prefill (T = prompt length) and decode (T = 1) step.

    The new tokens take cache slots [index, index + T). `kv_valid_bs` [B, S] marks the
    slots that hold real tokens (left padding of short prompts is 0), the new ones
    included; a query sees valid slots up to its own. Returns the final-norm hidden
    states [B, T, D] and the updated cache, in the layout it came in (module docstring).
    A per-layer cache runs over `blocks` (`layer_blocks(model)`, sliced here when None; a
    decode loop slices once and passes them).

    `rope`: every layer's rotary tables for these positions, `rope_tables(positions_bt,
    layer_attention(cfg)[0])` ([layers, B, T, 1, Dh/2] each), or None: each layer
    computes its own (a prefill's tables for all layers at once could be large).
    A decode loop passes tables it made outside the step (the sampler: in the step
    before, through the loop's carry): made in the step that reads them, XLA fuses the
    cos/sin into every head's rotation and recomputes them per element (~3% of a llama25m
    decode call on XLA:CPU, batch 16).
    """
    cfg = model.cfg
    stacked = isinstance(cache, dict)
    t, s = tokens_bt.shape[1], (cache if stacked else cache[0])["v"].shape[-2]
    query_slot = index + jnp.arange(t)
    key_slot = jnp.arange(s)
    causal = key_slot[None, :] <= query_slot[:, None]  # [T, S]
    mask = (causal[None] & (kv_valid_bs[:, None, :] > 0))[:, None, None]
    distance = query_slot[:, None] - key_slot[None, :]  # [T, S]
    x = model.embed(tokens_bt)
    if stacked:
        kv_index = (cache["k"], cache["v"], index)
        x, (k, v) = model.run_layers(x, positions_bt, mask, distance, kv_index, rope)
        return model.final_norm(x), {"k": k, "v": v}
    inv_freq_ld, window_l = layer_attention(cfg)
    blocks = layer_blocks(model) if blocks is None else blocks
    new_cache = []
    for layer, block in enumerate(blocks):
        layer_mask = window_mask(cfg, mask, distance, window_l[layer])
        layer_cache = (cache[layer]["k"], cache[layer]["v"], index)
        if rope is None:
            layer_rope = rope_tables(positions_bt, inv_freq_ld[layer])
        else:
            layer_rope = (rope[0][layer], rope[1][layer])
        x, (k, v) = block(x, layer_rope, layer_mask, layer_cache)
        new_cache.append({"k": k, "v": v})
    return model.final_norm(x), new_cache
