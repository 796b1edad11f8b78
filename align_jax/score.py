"""Score (prompt, completion) text with a trained reward model.

Python:

    scorer = RewardScorer.load("runs/reward_tiny")
    scorer.score(["what is two plus three? "], ["two plus three is five."])  # -> array([r])

Command line (JSONL with `prompt` and `completion` in, the same records plus `score` out):

    python -m align_jax.score --workdir=runs/reward_tiny --input=samples.jsonl [--output=-]

`RewardScorer` (align_jax/training/reward_model.py) rebuilds the reward model from its
workdir and encodes text exactly as in training (`bos + prompt + completion + eos`).
"""

from __future__ import annotations

import json
import sys

from align_jax import checkpoint as ckpt
from align_jax import cli
from align_jax.data.sources import DataError, read_records
from align_jax.malloc import keep_freed_memory
from align_jax.training.reward_model import RewardScorer

__all__ = ["RewardScorer", "main"]


def main(argv=None) -> int:
    keep_freed_memory()  # before jax starts its threads (align_jax/malloc.py)
    parser = cli.ArgumentParser(
        prog="python -m align_jax.score",
        description="Score prompt/completion JSONL with a reward model.",
    )
    parser.add_argument("--workdir", required=True, help="the reward model's run directory")
    parser.add_argument("--input", default="-", help="JSONL file with prompt and completion, or -")
    parser.add_argument("--output", default="-", help="where to write JSONL with scores, or -")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--batch_size", type=int, default=16)
    try:
        args = parser.parse_args(argv)
    except cli.UsageError as e:
        return cli.report(e)
    try:
        records = read_records(args.input, ("prompt", "completion"))
        scorer = RewardScorer.load(args.workdir, step=args.step, batch_size=args.batch_size)
        scores = scorer.score([r["prompt"] for r in records], [r["completion"] for r in records])
        out = sys.stdout if args.output == "-" else open(args.output, "w")
    except (DataError, ckpt.CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with out:
        for record, s in zip(records, scores, strict=True):
            out.write(json.dumps({**record, "score": float(s)}) + "\n")
    if scorer.num_truncated:
        print(f"note: {scorer.num_truncated} inputs cut at seq_len", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
