"""Command line: train any stage from a config file.

    python -m align_jax.train --config=configs/pretrain/tiny.py --workdir=runs/tiny \
        [--config.optimizer.learning_rate=1e-3 ...]

The config is loaded locked (align_jax/cli.py), so an unknown `--config.x` key is a one-line
error naming it and the valid keys near it. Running again with the same workdir resumes
from its latest checkpoint.
"""

from __future__ import annotations

import logging
import signal
import sys

import jax

from align_jax import cli
from align_jax.malloc import keep_freed_memory
from align_jax.training.errors import Interrupted, TrainingError
from align_jax.training.loop import train


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m align_jax.train", description=__doc__.splitlines()[0])
    cli.add_config_flag(p)
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, config)")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first: multi-host TPU pods detect their peers; "
        "elsewhere give --coordinator_address, --num_processes and --process_id",
    )
    p.add_argument(
        "--coordinator_address", default=None, help="host:port of process 0 (with --distributed)"
    )
    p.add_argument("--num_processes", type=int, default=None, help="processes in the job")
    p.add_argument("--process_id", type=int, default=None, help="this process's index")
    return p


def main(argv=None) -> int:
    keep_freed_memory()  # before jax starts its threads (align_jax/malloc.py)
    try:
        args, config = cli.parse_with_config(parser(), argv)
    except cli.UsageError as e:
        return cli.report(e)
    # force: importing orbax (through the loop) already gave the root logger a default handler.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    # Orbax (through absl) and asyncio log a failed background save or read with tracebacks,
    # once per array; the error reaches main() and is reported below in one line.
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(lambda record: record.levelno < logging.ERROR)
    sys.excepthook = _drop_closed_loop_callbacks(sys.excepthook)
    sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
    if args.distributed:
        if jax.config.jax_platforms == "cpu":  # CPU collectives across processes need gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    try:
        train(config, args.workdir)
    except Interrupted as e:  # a checkpoint was saved: say where, and how to resume
        return _last_word(str(e), 128 + e.signum)
    except KeyboardInterrupt:  # Ctrl-C before the loop took over SIGINT (start-up)
        return _last_word("interrupted during start-up; nothing was saved", 128 + signal.SIGINT)
    except (TrainingError, ValueError, OSError) as e:
        # Data, checkpoint and config errors are ValueErrors whose message names the file,
        # line or key: that line is the whole report.
        return _last_word(f"error: {e}", 1)
    return 0


def _last_word(line: str, status: int) -> int:
    """Prints the run's one-line report on stderr and returns `status`."""
    print(line, file=sys.stderr)
    sys.stderr.flush()
    return status


def _drop_closed_loop_callbacks(hook):
    """`hook` (sys.excepthook or sys.unraisablehook), except for "Event loop is closed": when
    one array write of an asynchronous checkpoint save fails, the checkpoint library closes
    its event loop while tensorstore still completes the other writes, and each completion's
    callback prints that traceback from a background thread. The failed save itself is
    reported as one line (align_jax.checkpoint)."""

    def filtered(*args):
        error = args[1] if len(args) > 1 else getattr(args[0], "exc_value", None)
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        hook(*args)

    return filtered


if __name__ == "__main__":
    sys.exit(main())
