"""The errors a run stops with: a one-line reason for the user (align_jax.train prints it
without a traceback). Every part of the training package raises them, so they sit below it."""


class TrainingError(RuntimeError):
    """A run that must stop, with a one-line reason for the user."""


class Interrupted(TrainingError):
    """A run stopped by a signal (SIGTERM, Ctrl-C) after saving a checkpoint. The command
    line exits with status 128 + `signum`, as a shell does for a program the signal killed,
    so a script that chains stages does not go on after an interrupted one."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
