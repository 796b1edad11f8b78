"""The main job on its tiny default: the pipeline end to end on this machine's CPU.

    make demo          # or: python experiments/demo.py --workdir=runs/demo

It writes a small synthetic corpus and tasks (experiments/tiny_corpus.py, tiny_tasks.py),
trains a sentencepiece tokenizer, then runs the stages through the real CLI
(`python -m align_jax.train`), each starting from the previous stage's checkpoint:
pretrain -> SFT -> reward model, and DPO from the SFT model; then it samples answers from
the DPO policy, scores them with the reward model, and exports the policy as a Hugging
Face checkpoint. PPO and GRPO join here as they land.
Running it again resumes (and finishes) the stages in the same workdir.
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
from tiny_tasks import write_tasks  # noqa: E402


def prepare_data(data_dir: str, vocab_size: int) -> None:
    if not os.path.exists(os.path.join(data_dir, "train.jsonl")):
        paths = write_corpus(data_dir, n_train=4000, n_eval=200, seed=0)
        print(f"corpus: {paths['train']} and {paths['eval']}")
    if not os.path.exists(os.path.join(data_dir, "r1_eval.jsonl")):  # the last file written
        write_tasks(data_dir, n_train=2000, n_eval=200, seed=0)
        print(f"tasks: {data_dir}/{{sft,pairs,lists,unpaired,rl,r1}}_*.jsonl")
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


def generate(policy_dir: str, reward_dir: str, question: str) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "align_jax.generate",
        f"--workdir={policy_dir}",
        f"--reward_workdir={reward_dir}",
        "--n=3",
        "--temperature=0.7",
        "--max_new_tokens=24",
    ]
    print(f"\n== sample: {' '.join(cmd[1:])}", flush=True)
    out = subprocess.run(
        cmd, cwd=REPO, input=question + "\n", capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def export_hf(policy_dir: str, hf_dir: str) -> float:
    """Exports the policy as a Hugging Face checkpoint, reads it back with `load_hf`, and
    returns the largest logit difference from the run's own model (0 up to float rounding)."""
    import numpy as np

    from align_jax.interop.hf import load_hf
    from align_jax.loading import load_run
    from align_jax.models import apply_model

    cmd = [sys.executable, "-m", "align_jax.interop.hf", "export", policy_dir, hf_dir]
    print(f"\n== export: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    _, graphdef, params, _ = load_run(policy_dir)
    tokens = np.arange(1, 33, dtype=np.int32)[None]
    ours = np.asarray(apply_model(graphdef, params, tokens))
    return float(np.abs(np.asarray(load_hf(hf_dir)(tokens)) - ours).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--data_dir", default="data/tiny")
    args = parser.parse_args()
    os.chdir(REPO)
    prepare_data(args.data_dir, vocab_size=512)

    runs = {s: os.path.join(args.workdir, s) for s in ("pretrain", "sft", "reward", "dpo")}
    pre = run_stage("pretrain", f"configs/pretrain/tiny.py:{args.data_dir}", runs["pretrain"])
    sft = run_stage(
        "sft",
        f"configs/sft/tiny.py:{args.data_dir}",
        runs["sft"],
        f"--config.init_from={runs['pretrain']}",
    )
    rm = run_stage(
        "reward",
        f"configs/reward/tiny.py:{args.data_dir}",
        runs["reward"],
        f"--config.init_from={runs['sft']}",
    )

    dpo = run_stage(
        "dpo",
        f"configs/dpo/tiny.py:{args.data_dir}",
        runs["dpo"],
        f"--config.init_from={runs['sft']}",
    )

    from align_jax.score import RewardScorer

    scorer = RewardScorer.load(runs["reward"])
    question = "what is two plus three? "
    answers = ["two plus three is five.", "five is two three plus."]
    scores = scorer.score([question] * 2, answers)

    last = lambda records, key: [r for r in records if key in r][-1]  # noqa: E731
    print("\n== summary")
    print(f"pretrain: uniform-guess loss ln(512) = {math.log(512):.3f}")
    first, final = [r for r in pre if "loss" in r][0], last(pre, "loss")
    print(
        f"pretrain: train loss {first['loss']:.3f} (step {first['step']}) -> "
        f"{final['loss']:.3f} (step {final['step']}), {final['tokens_per_sec']:.0f} tokens/s"
    )
    ev = last(pre, "eval_loss")
    print(f"pretrain: held-out loss {ev['eval_loss']:.3f}, perplexity {ev['eval_perplexity']:.2f}")
    ev = last(sft, "eval_loss")
    print(
        f"sft: held-out completion loss {ev['eval_loss']:.3f}, "
        f"token accuracy {ev['eval_token_accuracy']:.3f}"
    )
    ev = last(rm, "eval_loss")
    print(
        f"reward: held-out pairwise accuracy {ev['eval_accuracy']:.3f}, "
        f"margin {ev['eval_reward_margin']:.2f}"
    )
    for answer, score in zip(answers, scores, strict=True):
        print(f"reward: {question!r} -> {answer!r}: {score:+.3f}")
    ev = last(dpo, "eval_loss")
    print(
        f"dpo: held-out reward accuracy {ev['eval_reward_accuracy']:.3f}, "
        f"margin {ev['eval_reward_margin']:.2f}, KL to reference {ev['eval_kl_ref']:.3f}"
    )
    samples = generate(runs["dpo"], runs["reward"], question)
    for s in samples:
        print(f"dpo sample: {question!r} -> {s['completion']!r} (reward {s['score']:+.3f})")
    hf_dir = os.path.join(args.workdir, "dpo_hf")
    diff = export_hf(runs["dpo"], hf_dir)
    print(
        f"dpo policy as a Hugging Face checkpoint: {hf_dir} (reloaded logits differ by {diff:.1e})"
    )
    print(
        f"outputs: {args.workdir}/{{pretrain,sft,reward,dpo}} "
        "(config.json, metrics.jsonl, tensorboard/, checkpoints/), "
        f"{hf_dir} (safetensors + config.json for transformers)"
    )


if __name__ == "__main__":
    main()
