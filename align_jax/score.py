"""Score (prompt, completion) text with a trained reward model.

Python:

    scorer = RewardScorer.load("runs/reward_tiny")
    scorer.score(["what is two plus three? "], ["two plus three is five."])  # -> array([r])

Command line (JSONL with `prompt` and `completion` in, the same records plus `score` out):

    python -m align_jax.score --workdir=runs/reward_tiny --input=samples.jsonl [--output=-]

The reward model is rebuilt from its workdir's `config.json` (model shape, tokenizer,
seq_len) and the parameters of its latest checkpoint (or `--step`). Text is encoded exactly
as in training (`bos + prompt + completion + eos`), right-padded to `seq_len`; longer
inputs are cut at `seq_len` and counted in `scorer.num_truncated`.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from align_jax import checkpoint as ckpt
from align_jax import cli, loading, parallel
from align_jax.data.records import encode_completion
from align_jax.data.sources import DataError, read_records
from align_jax.data.tokenizer import Tokenizer


class RewardScorer:
    def __init__(self, config, params, graphdef, mesh, batch_size: int):
        from align_jax.objectives.reward import last_token_rewards

        self.config = config
        self.tokenizer = Tokenizer.load(config.data.tokenizer)
        self.batch_size = batch_size
        self.num_truncated = 0
        self._params = params
        rules = tuple(tuple(r) for r in config.sharding.rules)

        def score_fn(params, tokens, segments):
            with parallel.sharding_context(mesh, rules):
                return last_token_rewards(graphdef, params, tokens, segments)

        self._score = jax.jit(score_fn)

    @classmethod
    def load(cls, workdir: str, *, step: int | None = None, batch_size: int = 16, mesh=None):
        config, graphdef, params, mesh = loading.load_run(workdir, step=step, mesh=mesh)
        if config.model.head != "scalar":
            raise DataError(
                f"{workdir}: config.model.head is {config.model.head!r}; expected a reward "
                "model ('scalar')"
            )
        return cls(config, params, graphdef, mesh, batch_size)

    def score(self, prompts, completions) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        length = self.config.data.seq_len
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            chunk = list(
                zip(
                    prompts[lo : lo + self.batch_size],
                    completions[lo : lo + self.batch_size],
                    strict=True,
                )
            )
            tokens = np.zeros((self.batch_size, length), np.int32)
            segments = np.zeros((self.batch_size, length), np.int32)
            for i, (p, c) in enumerate(chunk):
                ids, _ = encode_completion(p, c, self.tokenizer, self.config.data)
                if len(ids) > length:
                    self.num_truncated += 1
                    ids = ids[:length]
                tokens[i, : len(ids)] = ids
                segments[i, : len(ids)] = 1
            segments[len(chunk) :, 0] = 1  # padding rows: one dummy token, result dropped
            scores = np.asarray(self._score(self._params, tokens, segments))
            out.append(scores[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def main(argv=None) -> int:
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
