"""Rollouts: batched sampling with a KV cache, and the reward functions that score samples."""

from align_jax.rollout.rewards import (
    REWARD_FUNCTIONS,
    RewardError,
    Rewards,
    TokenScorer,
    answer_match,
    length_penalty,
    math_equiv,
    r1_format,
    register,
    resolve,
    weighted_total,
)
from align_jax.rollout.sampler import (
    Sampler,
    SamplingParams,
    filter_logits,
    left_pad,
    reshard_params,
    sample_categorical,
)

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardError",
    "Rewards",
    "Sampler",
    "SamplingParams",
    "TokenScorer",
    "answer_match",
    "filter_logits",
    "left_pad",
    "length_penalty",
    "math_equiv",
    "r1_format",
    "register",
    "reshard_params",
    "resolve",
    "sample_categorical",
    "weighted_total",
]
