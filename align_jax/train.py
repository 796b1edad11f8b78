"""Command line: train any stage from a config file.

    python -m align_jax.train --config=configs/pretrain/tiny.py --workdir=runs/tiny \
        [--config.optimizer.learning_rate=1e-3 ...]

The config is loaded locked, so an unknown `--config.x` key is an error naming it. Running
again with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file: configs/<stage>/<name>.py[:arg]", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first: multi-host TPU pods detect their peers; "
    "elsewhere give --coordinator_address, --num_processes and --process_id.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (with --distributed; auto on TPU pods)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax

    if _DISTRIBUTED.value:
        if jax.config.jax_platforms == "cpu":  # CPU collectives across processes need gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )

    from align_jax.checkpoint import CheckpointError
    from align_jax.data.sources import DataError
    from align_jax.training.loop import TrainingError, train

    try:
        train(_CONFIG.value, _WORKDIR.value)
    except (TrainingError, DataError, CheckpointError, ValueError) as e:
        logging.getLogger("align_jax").error("%s", e)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
