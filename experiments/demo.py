"""The main job on its tiny default: the pipeline end to end on this machine's CPU.

    make demo          # or: python experiments/demo.py --workdir=runs/demo

Today the pipeline is its first stage, pretraining: it writes a small synthetic corpus,
trains a sentencepiece tokenizer on it, pretrains the tiny config through the real CLI
(`python -m align_jax.train`), and prints what the run learned. Later stages (SFT, reward
model, DPO, PPO, GRPO) join here as they land, each starting from the previous stage's
checkpoint. Running it again resumes (and finishes) the stages in the same workdir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

from tiny_corpus import write_corpus  # noqa: E402


def prepare_data(data_dir: str, vocab_size: int) -> None:
    if not os.path.exists(os.path.join(data_dir, "train.jsonl")):
        paths = write_corpus(data_dir, n_train=4000, n_eval=200, seed=0)
        print(f"corpus: {paths['train']} and {paths['eval']}")
    if not os.path.exists(os.path.join(data_dir, "tok.model")):
        from align_jax.data.tokenizer import train_tokenizer

        tok = train_tokenizer(
            [os.path.join(data_dir, "train.jsonl")], os.path.join(data_dir, "tok"), vocab_size
        )
        print(f"tokenizer: {data_dir}/tok.model ({tok.vocab_size} pieces)")


def run_stage(name: str, config: str, workdir: str, *overrides: str) -> list[dict]:
    cmd = [sys.executable, "-m", "align_jax.train", f"--config={config}", f"--workdir={workdir}"]
    cmd += list(overrides)
    print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--data_dir", default="data/tiny")
    args = parser.parse_args()
    os.chdir(REPO)
    prepare_data(args.data_dir, vocab_size=512)

    records = run_stage(
        "pretrain",
        f"configs/pretrain/tiny.py:{args.data_dir}",
        os.path.join(args.workdir, "pretrain"),
    )
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    print("\n== summary")
    print(f"pretrain: uniform-guess loss ln(512) = {math.log(512):.3f}")
    print(
        f"pretrain: train loss {train[0]['loss']:.3f} (step {train[0]['step']}) -> "
        f"{train[-1]['loss']:.3f} (step {train[-1]['step']})"
    )
    if evals:
        print(
            f"pretrain: held-out loss {evals[-1]['eval_loss']:.3f}, "
            f"perplexity {evals[-1]['eval_perplexity']:.2f}"
        )
    print(f"pretrain: {train[-1]['tokens_per_sec']:.0f} tokens/s")
    print(
        f"outputs: {args.workdir}/pretrain (config.json, metrics.jsonl, tensorboard/, checkpoints/)"
    )


if __name__ == "__main__":
    main()
