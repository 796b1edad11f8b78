"""The error a run stops with: a one-line reason for the user (align_jax.train prints it
without a traceback). Every part of the training package raises it, so it sits below them."""


class TrainingError(RuntimeError):
    """A run that must stop, with a one-line reason for the user."""
