"""Decoder-only transformer in Flax NNX, with switches for the Llama, Qwen and Gemma families.

The blocks (attention, MLP, norms, RoPE) are in `align_jax.models.layers`; this module
stacks them and runs the forward pass: embedding (scaled for Gemma), the layers, the final
norm, and an LM head (tied or not, logit soft-capping for Gemma 2) or a scalar head.

Layers are stacked: every block parameter has a leading `layers` dimension and the forward
pass is one `jax.lax.scan`, so compile time does not grow with depth. Rematerialisation is
a policy on the scanned body. The sampler's cached decode (`align_jax.models.decode`) runs
the same scan with its KV cache in the carry, or the same blocks unrolled.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.models.attention import Segments
from align_jax.models.layers import (
    Block,
    RMSNorm,
    attention_mask,
    dense,
    jnp_dtype,
    layer_attention,
    new_param,
    rope_tables,
    softcap,
    window_mask,
)
from align_jax.parallel import constrain

_REMAT_POLICIES = {
    "full": None,  # save nothing; recompute the block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nnx.Module):
    """`model(tokens [B, L], positions, segment_ids) -> logits [B, L, V]` (float32)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embedding = new_param(
            rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg, "normal"
        )
        self.layers = Block(cfg, rngs, stack=(cfg.n_layers,))
        self.final_norm = RMSNorm(cfg.d_model, "embed", cfg, rngs)
        if cfg.head not in ("lm", "scalar"):
            raise ValueError(f"config.model.head '{cfg.head}' is not one of lm, scalar")
        if cfg.head == "scalar":
            # Reward and value models: one score per token, read where the objective wants.
            self.score_head = new_param(rngs, (cfg.d_model, 1), ("embed", None), cfg, "normal")
        elif not cfg.tie_embeddings:
            self.lm_head = new_param(
                rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg, "normal"
            )

    def hidden_states(self, tokens_bl, positions_bl=None, segment_ids_bl=None) -> jax.Array:
        """Final-norm hidden states [B, L, D]: what scalar heads (reward, value) read."""
        if positions_bl is None:
            positions_bl = jnp.broadcast_to(jnp.arange(tokens_bl.shape[1]), tokens_bl.shape)
        if segment_ids_bl is None:
            segment_ids_bl = jnp.ones_like(tokens_bl)
        if self.cfg.get("attention", "xla") == "xla":
            mask = attention_mask(segment_ids_bl)
        else:  # a fused kernel builds its mask from the segment ids
            mask = Segments(segment_ids_bl, window=None)
        x = self.run_layers(self.embed(tokens_bl), positions_bl, mask)
        return self.final_norm(x)

    def embed(self, tokens_bl) -> jax.Array:
        """The token embeddings [B, L, D] in the compute dtype: the residual stream's start."""
        cfg = self.cfg
        dtype = jnp_dtype(cfg.dtype)
        # Gather from a table replicated over `vocab` (kept split over `embed`): a gather from
        # a vocab-split table makes GSPMD replicate it anyway, with a warning per call.
        table = constrain(self.embedding[...], (None, "embed"))
        x = jnp.take(table, tokens_bl, axis=0).astype(dtype)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
        return constrain(x, ("batch", "length", "embed"))

    def run_layers(self, x, positions_bl, mask, distance=None, cache=None, rope=None):
        """The scanned blocks over the residual stream x [B, L, D]: the stream after the last
        layer, or, with a stacked `cache = (k, v, index)` riding in the scan's carry (the
        cached decode, `align_jax.models.decode.extend`), `(x, (k, v))`.

        `mask` [B, 1, 1, L, S]: which keys each query sees (before sliding windows); or,
        without a cache, the `Segments` a fused attention kernel takes.
        `distance` [L, S] (query slot - key slot) places keys in sliding windows; it
        defaults to token-index distance, the position distance within a packed document.
        `rope`: all layers' rotary tables for `positions_bl` ([layers, B, L, 1, Dh/2] each);
        computed per layer when None.
        """
        cfg = self.cfg
        inv_freq_ld, window_l = layer_attention(cfg)
        if distance is None:
            slots = jnp.arange(x.shape[1])
            distance = slots[:, None] - slots[None, :]

        graphdef, stacked = nnx.split(self.layers)

        def body(carry, xs):
            x, kv = carry
            layer_state, layer_rope, window, layer = xs
            layer_cache = None if kv is None else (*kv, cache[2], layer)
            block = nnx.merge(graphdef, layer_state)
            if isinstance(mask, Segments):
                layer_mask = mask._replace(window=window)
            else:
                layer_mask = window_mask(cfg, mask, distance, window)
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
        unroll = cfg.get("scan_unroll", 1)
        if not isinstance(unroll, int) or isinstance(unroll, bool) or unroll < 1:
            raise ValueError(f"config.model.scan_unroll={unroll!r}; expected an integer >= 1")
        kv = None if cache is None else cache[:2]
        xs = (stacked, inv_freq_ld if rope is None else rope, window_l, jnp.arange(cfg.n_layers))
        x, kv = jax.lax.scan(body, (x, kv), xs, unroll=min(unroll, cfg.n_layers))[0]
        return x if cache is None else (x, kv)

    def logits(self, hidden_bld: jax.Array) -> jax.Array:
        cfg = self.cfg
        dtype = hidden_bld.dtype
        if cfg.tie_embeddings:
            logits = dense(hidden_bld, self.embedding[...].astype(dtype).T)
        else:
            logits = dense(hidden_bld, self.lm_head[...].astype(dtype))
        logits = softcap(logits.astype(jnp.float32), cfg.final_logit_softcap)
        return constrain(logits, ("batch", "length", "vocab"))

    def scores(self, hidden_bld: jax.Array) -> jax.Array:
        """Scalar-head scores [B, L] (float32) of `config.model.head = "scalar"` models."""
        kernel = self.score_head[...].astype(hidden_bld.dtype)
        return (hidden_bld @ kernel)[..., 0].astype(jnp.float32)

    def __call__(self, tokens_bl, positions_bl=None, segment_ids_bl=None) -> jax.Array:
        """Logits [B, L, V], or scores [B, L] for a scalar-head model."""
        hidden = self.hidden_states(tokens_bl, positions_bl, segment_ids_bl)
        return self.scores(hidden) if self.cfg.head == "scalar" else self.logits(hidden)
