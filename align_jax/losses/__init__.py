"""Pure loss functions over arrays: no model, no config, no Flax.

Import them into any research code: `from align_jax.losses import cross_entropy, ...`.
"""

from align_jax.losses.common import cross_entropy, masked_mean, token_logprobs

__all__ = ["cross_entropy", "masked_mean", "token_logprobs"]
