"""Interop with other ecosystems: Hugging Face checkpoints (`align_jax.interop.hf`)."""
