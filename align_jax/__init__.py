"""align_jax: the LLM alignment pipeline in JAX/Flax NNX."""

__version__ = "0.1.0"
