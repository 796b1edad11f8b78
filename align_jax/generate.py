"""Generate completions from any stage's checkpoint (and score them with a reward model).

    python -m align_jax.generate --workdir=runs/demo/sft --input=prompts.jsonl \
        [--output=out.jsonl] [--max_new_tokens=64 --temperature=0.7 --top_p=0.9 --n=4] \
        [--chat] [--reward_workdir=runs/demo/reward [--best_of_n=16]]

Input: JSONL records with a `prompt` field (other fields are passed through), or, from
stdin (`--input=-`, the default), plain lines, each line one prompt. Output: one JSONL
record per sample: the input fields, `completion`, `sample` (0..n-1), `num_tokens`,
`finished` (ended with eos), and `score` when a reward model is given.

`--best_of_n=N` (with `--reward_workdir`): best-of-n sampling. It draws N samples per prompt
(`--n` is then ignored), scores them with the reward model and writes one record per prompt:
the highest-scored sample, its `score`, `sample` (which of the N), `best_of_n` and every
sample's `scores`. Its KL to the sampling policy is at most log N - (N - 1) / N nats
(Stiennon et al., arXiv 2009.01325), the usual x-axis for best-of-n in over-optimisation
plots.

`--chat` renders each prompt as a user turn of the run's chat template (config.data
.chat_template) followed by the assistant marker, as SFT trained it; with `checkpoint`, the
tokenizer's own template with its generation prompt.
"""

from __future__ import annotations

import json
import sys

from align_jax import checkpoint as ckpt
from align_jax import cli, loading
from align_jax.data.records import CHAT_TEMPLATES, CHECKPOINT_TEMPLATE
from align_jax.data.sources import DataError, read_records
from align_jax.data.tokenizer import Tokenizer
from align_jax.malloc import keep_freed_memory
from align_jax.rollout import Sampler, SamplingParams


def read_prompts(path: str) -> list[dict]:
    """Prompt records from JSONL, or (`-`) one plain-text prompt per line of standard input."""
    if path == "-":
        return [{"prompt": line.rstrip("\n")} for line in sys.stdin if line.strip()]
    return read_records(path, ("prompt",))


def render(prompt: str, chat_template: str | None, tokenizer: Tokenizer) -> str:
    if not chat_template:
        return prompt
    if chat_template == CHECKPOINT_TEMPLATE:
        turn = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(turn, add_generation_prompt=True)
    t = CHAT_TEMPLATES[chat_template]
    return t["prefix"]["user"] + prompt + t["suffix"]["user"] + t["prefix"]["assistant"]


def best_of(results: list[dict], n: int) -> list[dict]:
    """The highest-scored of each prompt's `n` consecutive samples (the first on a tie), with
    `best_of_n` and all `n` scores."""
    best = []
    for lo in range(0, len(results), n):
        group = results[lo : lo + n]
        scores = [r["score"] for r in group]
        top = max(range(n), key=lambda i: (scores[i], -i))
        best.append({**group[top], "best_of_n": n, "scores": scores})
    return best


def main(argv=None) -> int:
    keep_freed_memory()  # before jax starts its threads (align_jax/malloc.py)
    p = cli.ArgumentParser(prog="python -m align_jax.generate", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="run directory of any stage (an LM head)")
    p.add_argument("--input", default="-", help="prompts: JSONL with 'prompt', or - for lines")
    p.add_argument("--output", default="-")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16, help="prompts per sampler call")
    p.add_argument("--chat", action="store_true", help="render prompts with the chat template")
    p.add_argument("--reward_workdir", default=None, help="score samples with this reward model")
    p.add_argument(
        "--best_of_n",
        type=int,
        default=0,
        help="draw N samples a prompt, keep the one the reward model scores highest",
    )
    try:
        args = p.parse_args(argv)
        if args.best_of_n < 0 or (args.best_of_n and not args.reward_workdir):
            raise cli.UsageError("--best_of_n=N needs N >= 1 and --reward_workdir")
    except cli.UsageError as e:
        return cli.report(e)
    n = args.best_of_n or args.n
    try:
        records = read_prompts(args.input)
        config, graphdef, params, mesh = loading.load_run(args.workdir, step=args.step)
        if config.model.head != "lm":
            raise DataError(f"{args.workdir}: a {config.model.head!r}-head model cannot generate")
        tokenizer = Tokenizer.load(config.data.tokenizer)
        sampler = Sampler(
            graphdef, mesh, config.sharding.rules, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
        )
        sp = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, n)
        template = config.data.chat_template if args.chat else None
        scorer = None
        if args.reward_workdir:
            from align_jax.score import RewardScorer

            scorer = RewardScorer.load(args.reward_workdir)
        results = []
        for lo in range(0, len(records), args.batch_size):
            chunk = records[lo : lo + args.batch_size]
            prompts = [
                [tokenizer.bos_id] * bool(config.data.add_bos)
                + tokenizer.encode(render(r["prompt"], template, tokenizer))
                for r in chunk
            ]
            out = sampler.generate(params, prompts, sp, seed=args.seed + lo)
            for row, i in enumerate(out["prompt_index"]):
                n_tok = int(out["mask"][row].sum())
                ids = out["tokens"][row][:n_tok].tolist()
                finished = bool(ids) and ids[-1] == tokenizer.eos_id
                text = tokenizer.decode(ids[:-1] if finished else ids)
                results.append(
                    {
                        **chunk[i],
                        "completion": text,
                        "sample": row % n,
                        "num_tokens": n_tok,
                        "finished": finished,
                    }
                )
        if scorer is not None:
            scores = scorer.score(
                [r["prompt"] for r in results], [r["completion"] for r in results]
            )
            for r, s in zip(results, scores, strict=True):
                r["score"] = float(s)
            if args.best_of_n:
                results = best_of(results, args.best_of_n)
        out_file = sys.stdout if args.output == "-" else open(args.output, "w")
    except (DataError, ckpt.CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in results:
        out_file.write(json.dumps(r) + "\n")
    if out_file is not sys.stdout:
        out_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
