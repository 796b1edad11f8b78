"""Models: the decoder-only transformer and helpers to build it sharded on a mesh."""

from align_jax.models.build import (
    abstract_params,
    apply_model,
    apply_scores,
    init_params,
    param_shardings,
    sequence_logprobs,
)
from align_jax.models.lora import merge_lora
from align_jax.models.lora import settings as lora_settings
from align_jax.models.transformer import (
    Transformer,
    count_params,
    jnp_dtype,
    train_flops_per_token,
)

__all__ = [
    "Transformer",
    "abstract_params",
    "apply_model",
    "apply_scores",
    "count_params",
    "init_params",
    "jnp_dtype",
    "lora_settings",
    "merge_lora",
    "param_shardings",
    "sequence_logprobs",
    "train_flops_per_token",
]
