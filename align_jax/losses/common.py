"""Token-level building blocks: log-probs of targets, next-token cross-entropy, token KL."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_blv: jax.Array, targets_bl: jax.Array, *, temperature: float = 1.0):
    """log softmax(logits / T)[target], [B, L] float32.

    Computed as `logit[target] - logsumexp(logits)` so the full [B, L, V] log-softmax is
    never materialised.
    """
    logits = logits_blv.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    target_logits = jnp.take_along_axis(logits, targets_bl[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def token_kl(logits_blv: jax.Array, ref_logits_blv: jax.Array) -> jax.Array:
    """Exact next-token KL divergence of two models at each position, [B, L] float32.

    `KL(π ‖ π_ref) = Σ_v π(v) (log π(v) − log π_ref(v))` with `π = softmax(logits)` and
    `π_ref = softmax(ref_logits)` over the whole vocabulary (computed in float32), i.e. the
    divergence of the two next-token distributions given the same prefix.
    """
    logp = jax.nn.log_softmax(logits_blv.astype(jnp.float32), axis=-1)
    ref_logp = jax.nn.log_softmax(ref_logits_blv.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)


def cross_entropy(
    logits_blv: jax.Array, targets_bl: jax.Array, mask_bl: jax.Array, *, z_loss: float = 0.0
):
    """Summed next-token cross-entropy over masked-in tokens, and the token count.

    Returns `(loss_sum, z_loss_sum, num_tokens)`. The caller divides once by the total token
    count, so gradient accumulation over micro-batches equals one big batch exactly (the
    per-micro-batch mean is the known bug: it weights short micro-batches up).
    `z_loss` adds `z_loss * logsumexp(logits)^2` per token (PaLM, arXiv 2204.02311).
    """
    logits = logits_blv.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets_bl[..., None], axis=-1)[..., 0]
    mask = mask_bl.astype(jnp.float32)
    nll_sum = jnp.sum((log_z - target_logits) * mask)
    z_sum = jnp.sum(z_loss * jnp.square(log_z) * mask)
    return nll_sum, z_sum, jnp.sum(mask)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)
