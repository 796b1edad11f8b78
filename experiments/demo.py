"""The main job on its tiny default: the whole alignment pipeline on this machine's CPU.

    make demo          # or: python experiments/demo.py --workdir=runs/demo

The task: small arithmetic questions ("what is two plus three?") in a synthetic language
(experiments/tiny_corpus.py, tiny_tasks.py). The SFT demonstrations come from a careless
demonstrator: 30% of them answer with a number copied from the question ("two plus three is
three."). The **gold** reward, `tiny_corpus.answer_reward` (1 when the answer is right), is
what no RLHF model sees: the reward model learns from preference pairs a labeller gave by
the gold reward, with 10% of the labels flipped (`gold_pairs_*.jsonl`), so it is a proxy. It
learns to catch copied numbers, and hardly at all near misses. The table shows how far each
method's gains on the proxy are real.

Stages, each through the real command line (`python -m align_jax.train`), each starting from
the checkpoint before it:

    pretrain -> SFT -> reward model -> DPO  (the labelled pairs)
                                    -> PPO  (the reward model, KL to SFT)
                                    -> GRPO (the reward model, 8 samples a prompt)
    pretrain -> R1-Zero GRPO (the gold reward as a verifiable one, no SFT)

Then every policy answers the same held-out questions (`experiments/evaluate.py`), and the
demo prints one table (held-out gold accuracy, reward-model score, KL to the reference,
completion length) and writes it with PNG plots of each stage's curves to the workdir.
Running it again resumes the stages in the same workdir and finishes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

from sweep import run_to_the_end  # noqa: E402
from tiny_corpus import write_corpus  # noqa: E402
from tiny_tasks import write_tasks  # noqa: E402

from align_jax.malloc import keep_freed_memory  # noqa: E402


def stages(runs: dict, scale: float) -> list[tuple[str, str, list[str]]]:
    """(name, config, overrides) of each stage in order; `scale` shrinks the step counts."""
    steps = lambda n: f"--config.total_steps={max(2, round(n * scale))}"  # noqa: E731
    start = lambda run: f"--config.init_from={runs[run]}"  # noqa: E731
    rm = f"--config.rewards.reward_model={runs['reward']}"
    return [
        ("pretrain", "pretrain/tiny.py", [steps(300)]),
        ("sft", "sft/demo.py", [start("pretrain"), steps(150)]),
        ("reward", "reward/demo.py", [start("sft"), steps(100)]),
        ("dpo", "dpo/demo.py", [start("sft"), steps(60)]),
        ("ppo", "ppo/demo.py", [start("sft"), rm, steps(60)]),
        ("grpo", "grpo/demo.py", [start("sft"), rm, steps(60)]),
        ("r1_zero", "grpo/r1_zero_tiny.py", [start("pretrain"), steps(150)]),
    ]


# The table's rows: (label, run, reference run, held-out prompts, scored by the reward model).
POLICIES = (
    ("SFT", "sft", "sft", "rl", True),
    ("DPO", "dpo", "sft", "rl", True),
    ("PPO", "ppo", "sft", "rl", True),
    ("GRPO", "grpo", "sft", "rl", True),
    ("R1-Zero GRPO", "r1_zero", "pretrain", "r1", False),
)


def prepare_data(data_dir: str, vocab_size: int) -> None:
    if not os.path.exists(os.path.join(data_dir, "train.jsonl")):
        paths = write_corpus(data_dir, n_train=4000, n_eval=200, seed=0)
        print(f"corpus: {paths['train']} and {paths['eval']}")
    if not os.path.exists(os.path.join(data_dir, "r1_eval.jsonl")):  # the last file written
        write_tasks(data_dir, n_train=2000, n_eval=200, seed=0)
        print(f"tasks: {data_dir}/{{sft,demo_sft,gold_pairs,pairs,...,rl,r1}}_*.jsonl")
    if not os.path.exists(os.path.join(data_dir, "tok.model")):
        from align_jax.data.tokenizer import train_tokenizer

        tok = train_tokenizer(
            [os.path.join(data_dir, "train.jsonl")], os.path.join(data_dir, "tok"), vocab_size
        )
        print(f"tokenizer: {data_dir}/tok.model ({tok.vocab_size} pieces)")


def run_stage(i: int, n: int, name: str, config: str, workdir: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "align_jax.train", f"--config={config}", f"--workdir={workdir}"]
    print(f"\n== [{i}/{n}] {name}: {' '.join(cmd[1:] + overrides)}", flush=True)
    t0 = time.perf_counter()
    status = run_to_the_end(cmd + overrides)
    if status in (130, 143, -2, -15):  # Ctrl-C or SIGTERM: the stage saved a checkpoint
        print(f"== {name} interrupted; run the same command again to resume", flush=True)
        sys.exit(130 if status < 0 else status)
    if status:
        print(f"== {name} failed (exit status {status})", flush=True)
        sys.exit(1)
    print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| policy | held-out gold accuracy | reward-model score | KL to reference (nats) | "
        "mean length (tokens) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        proxy = f"{r['proxy']:+.2f}" if "proxy" in r else "-"
        lines.append(
            f"| {r['label']} | {r['gold']:.3f} | {proxy} | {r['kl']:.2f} ({r['reference']}) "
            f"| {r['length']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    keep_freed_memory()  # the evaluation runs jax in this process (align_jax/malloc.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--data_dir", default="data/tiny")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies every stage's steps (tests: 0.3)"
    )
    parser.add_argument("--eval_prompts", type=int, default=200, help="held-out questions")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    t0 = time.perf_counter()
    prepare_data(args.data_dir, vocab_size=512)
    names = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo", "r1_zero")
    runs = {s: os.path.join(args.workdir, s) for s in names}
    plan = stages(runs, args.scale)
    for i, (name, config, overrides) in enumerate(plan, start=1):
        run_stage(i, len(plan), name, f"configs/{config}:{args.data_dir}", runs[name], overrides)

    from evaluate import evaluate, read_jsonl

    print(f"\n== evaluating every policy on {args.eval_prompts} held-out questions", flush=True)
    rows = []
    for label, run, reference, prompts, scored in POLICIES:
        path = os.path.join(args.data_dir, f"{prompts}_eval.jsonl")
        records = read_jsonl(path, args.eval_prompts)
        result = evaluate(
            runs[run],
            records,
            reference_dir=runs[reference],
            reward_dir=runs["reward"] if scored else "",
            max_new_tokens=32 if run == "r1_zero" else 16,
        )
        rows.append({"label": label, "run": run, "reference": reference, **result})
        print(f"{label}: gold {result['gold']:.3f}, KL {result['kl']:.2f}", flush=True)

    from plots import plot_stage

    pngs = [plot_stage(name, metrics(runs[name]), args.workdir) for name in names]
    text = table(rows)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print("\n== results\n" + text)
    print(f"\nplots: {', '.join(pngs)}")
    print(f"table: {args.workdir}/results.md (and results.json)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
