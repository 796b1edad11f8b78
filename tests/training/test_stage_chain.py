"""pretrain -> sft -> reward on the 8-device mesh, a different mesh layout in each stage,
each stage starting from the previous one's checkpoint; then the scoring API and CLI."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from align_jax.data.tokenizer import train_tokenizer
from align_jax.score import RewardScorer
from align_jax.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "experiments"))
from tiny_corpus import write_corpus  # noqa: E402
from tiny_tasks import write_tasks  # noqa: E402


def config(stage, data_dir, **kw):
    path = os.path.join(REPO, "configs", stage, "tiny.py")
    spec = importlib.util.spec_from_file_location(f"cfg_{stage}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(str(data_dir))
    c.update(log_every=10, progress_bar=False, async_checkpointing=False)
    c.data.prefetch_batches = 0
    for key, value in kw.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_pretrain_sft_reward_chain(tmp_path):
    data = tmp_path / "data"
    write_corpus(data, n_train=1500, n_eval=50, seed=0)
    write_tasks(data, n_train=800, n_eval=100, seed=0)
    train_tokenizer([str(data / "train.jsonl")], str(data / "tok"), 512)
    runs = tmp_path / "runs"

    pre = config(
        "pretrain",
        data,
        total_steps=80,
        eval_every=0,
        checkpoint_every=80,
        **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "data.seq_len": 64},
    )
    loop.train(pre, str(runs / "pre"))

    sft = config(
        "sft",
        data,
        total_steps=60,
        eval_every=60,
        checkpoint_every=60,
        init_from=str(runs / "pre"),
        **{"mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 1, "data.seq_len": 64},
    )
    loop.train(sft, str(runs / "sft"))
    sft_metrics = records(runs / "sft")
    # Starts from the pretrained model (not from scratch) and learns the task.
    assert sft_metrics[0]["loss"] < 4.0
    sft_eval = [r for r in sft_metrics if "eval_loss" in r][-1]
    assert sft_eval["eval_token_accuracy"] > 0.6

    rm = config(
        "reward",
        data,
        total_steps=60,
        eval_every=60,
        checkpoint_every=60,
        init_from=str(runs / "sft"),
        **{"mesh.data": 2, "mesh.fsdp": 1, "mesh.tensor": 4},
    )
    loop.train(rm, str(runs / "rm"))
    rm_eval = [r for r in records(runs / "rm") if "eval_loss" in r][-1]
    assert rm_eval["eval_accuracy"] >= 0.9, rm_eval

    # DPO from the SFT checkpoint: policy and frozen reference both from it.
    dpo = config(
        "dpo",
        data,
        total_steps=30,
        eval_every=30,
        checkpoint_every=30,
        init_from=str(runs / "sft"),
        **{"mesh.data": 2, "mesh.fsdp": 4, "mesh.tensor": 1},
    )
    loop.train(dpo, str(runs / "dpo"))
    dpo_records = records(runs / "dpo")
    assert dpo_records[0]["reward_accuracy"] == 0.0  # policy == reference at step 1: ties
    dpo_eval = [r for r in dpo_records if "eval_loss" in r][-1]
    assert dpo_eval["eval_reward_accuracy"] >= 0.8, dpo_eval
    assert dpo_eval["eval_kl_ref"] > 0
    # Another variant is one flag; precomputed reference log-probs give the same first step.
    ipo = config(
        "dpo",
        data,
        total_steps=2,
        eval_every=0,
        checkpoint_every=2,
        init_from=str(runs / "sft"),
        **{"objective.loss_type": "ipo", "objective.precompute_ref_logps": True},
    )
    loop.train(ipo, str(runs / "ipo"))
    ipo_inline = config(
        "dpo",
        data,
        total_steps=2,
        eval_every=0,
        checkpoint_every=2,
        init_from=str(runs / "sft"),
        **{"objective.loss_type": "ipo"},
    )
    loop.train(ipo_inline, str(runs / "ipo_inline"))
    first = [records(runs / w)[0]["loss"] for w in ("ipo", "ipo_inline")]
    assert first[0] == pytest.approx(first[1], rel=1e-5)
    assert first[0] == pytest.approx(1 / (2 * 0.1) ** 2 * 1.0, rel=1e-3)  # (0 - 1/(2β))² at init
    assert os.path.exists(runs / "ipo" / "ref_logps_train.npy")

    # The scoring API reproduces the held-out preference.
    scorer = RewardScorer.load(str(runs / "rm"))
    pairs = [json.loads(line) for line in open(data / "pairs_eval.jsonl")][:40]
    chosen = scorer.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = scorer.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    assert np.mean(chosen > rejected) >= 0.9

    inp = tmp_path / "score.jsonl"
    inp.write_text(
        "".join(
            json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs[:3]
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "align_jax.score", f"--workdir={runs / 'rm'}", f"--input={inp}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, XLA_FLAGS=""),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    scored = [json.loads(line) for line in out.stdout.splitlines()]
    np.testing.assert_allclose([s["score"] for s in scored], chosen[:3], rtol=1e-4, atol=1e-5)

    # Generation from the SFT checkpoint, scored by the reward model, through the CLI.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": pairs[0]["prompt"], "id": 1}) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "align_jax.generate",
        f"--workdir={runs / 'sft'}",
        f"--input={prompts}",
        "--temperature=0",
        "--max_new_tokens=24",
        "--n=2",
        f"--reward_workdir={runs / 'rm'}",
    ]
    out = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, XLA_FLAGS=""),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    samples = [json.loads(line) for line in out.stdout.splitlines()]
    assert [s["sample"] for s in samples] == [0, 1] and all(s["id"] == 1 for s in samples)
    assert samples[0]["completion"] == samples[1]["completion"]  # greedy
    assert samples[0]["finished"] and 0 < samples[0]["num_tokens"] <= 24
    want = scorer.score([pairs[0]["prompt"]], [samples[0]["completion"]])[0]
    assert samples[0]["score"] == pytest.approx(float(want), rel=1e-4, abs=1e-5)
