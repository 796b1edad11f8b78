"""Models: the decoder-only transformer and helpers to build it sharded on a mesh.

`layers` (norms, RoPE, attention, MLP, block), `transformer` (the module and its forward),
`decode` (KV caches and the cached prefill / decode step), `lora` (adapters), `counting`
(parameter and FLOP counts), `build` (sharded initialisation and the functional apply).
"""

from align_jax.models.build import (
    abstract_params,
    apply_model,
    init_params,
    param_shardings,
    sequence_logprobs,
)
from align_jax.models.counting import count_params, train_flops_per_token
from align_jax.models.layers import jnp_dtype
from align_jax.models.lora import merge_lora
from align_jax.models.lora import settings as lora_settings
from align_jax.models.transformer import Transformer

__all__ = [
    "Transformer",
    "abstract_params",
    "apply_model",
    "count_params",
    "init_params",
    "jnp_dtype",
    "lora_settings",
    "merge_lora",
    "param_shardings",
    "sequence_logprobs",
    "train_flops_per_token",
]
