"""Rollouts: batched sampling with a KV cache."""

from align_jax.rollout.sampler import (
    Sampler,
    SamplingParams,
    filter_logits,
    left_pad,
    reshard_params,
    sample_categorical,
)

__all__ = [
    "Sampler",
    "SamplingParams",
    "filter_logits",
    "left_pad",
    "reshard_params",
    "sample_categorical",
]
