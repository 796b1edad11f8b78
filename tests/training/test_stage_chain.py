"""pretrain -> sft -> reward on the 8-device mesh, a different mesh layout in each stage,
each stage starting from the previous one's checkpoint; then the scoring API and CLI."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from tiny_runs import HANG_GUARD_S, REPO, read_params, stage_config, xla_env

from align_jax import models
from align_jax.data.tokenizer import Tokenizer
from align_jax.score import RewardScorer
from align_jax.training import loop, sources


def config(stage, data_dir, **kw):
    return stage_config(f"{stage}/tiny.py", data_dir, log_every=10, **kw)


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def latest_params(workdir) -> dict:
    """The latest checkpoint's parameters as numpy arrays, read by Orbax itself."""
    step = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    return read_params(workdir, step)


def by_path(params) -> dict:
    """`{"['layers']['mlp']['up_kernel']": array, ...}`"""
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree.leaves_with_path(params)}


def forward(model_cfg, params, tokens):
    """The model's output (LM logits or reward scores) for right-padded rows, float64, straight
    from the module: no segment ids, as causal attention keeps later padding out anyway."""
    graphdef = models.abstract_params(model_cfg)[0]
    out = jax.jit(lambda p, t: models.apply_model(graphdef, p, t))(params, tokens)
    return np.asarray(out, np.float64)


def completion_logps(model_cfg, params, batch, side):
    """Summed log-probs of each pair's `side` completion (log-softmax taken here)."""
    tokens = batch[f"{side}_tokens"]
    logits = forward(model_cfg, params, tokens[:, :-1])
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    token_logps = np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    return np.sum(token_logps * batch[f"{side}_mask"][:, 1:], -1)


def last_token_scores(model_cfg, params, tokenizer, prompts, completions):
    """A reward model's score of bos + prompt + completion + eos, taken at the eos; the text
    is encoded here by the tokenizer alone."""
    rows = [
        [tokenizer.bos_id, *tokenizer.encode(p), *tokenizer.encode(c), tokenizer.eos_id]
        for p, c in zip(prompts, completions, strict=True)
    ]
    tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    scores = forward(model_cfg, params, tokens)
    return np.array([scores[i, len(row) - 1] for i, row in enumerate(rows)]), tokens.shape[1]


@pytest.mark.slow
def test_pretrain_sft_reward_chain(sft_run, tmp_path):
    # pretrain (2x2x2 mesh) -> SFT (1x8x1): the session's chain (tests/conftest.py).
    data, runs = sft_run.data, tmp_path / "runs"
    sft_metrics = records(sft_run.sft)
    # Starts from the pretrained model, not from scratch (a fresh model's loss is about
    # ln 512 = 6.24), and learns the task.
    assert sft_metrics[0]["loss"] < 0.75 * math.log(512)
    sft_eval = [r for r in sft_metrics if "eval_loss" in r][-1]
    assert sft_eval["eval_token_accuracy"] > 0.6

    # What the reward stage loads: with a learning rate of 0, its step-1 checkpoint holds its
    # initial parameters, which must be the SFT checkpoint's bit for bit, plus a new head.
    rm_init = config(
        "reward",
        data,
        total_steps=1,
        eval_every=0,
        checkpoint_every=1,
        init_from=str(sft_run.sft),
        **{"mesh.data": 2, "mesh.fsdp": 1, "mesh.tensor": 4, "optimizer.learning_rate": 0.0},
    )
    loop.train(rm_init, str(runs / "rm_init"))
    loaded, sft_params = (by_path(latest_params(w)) for w in (runs / "rm_init", sft_run.sft))
    assert set(loaded) - set(sft_params) == {"['score_head']"}
    for key in set(loaded) - {"['score_head']"}:
        np.testing.assert_array_equal(loaded[key], sft_params[key], err_msg=key)
    head = loaded["['score_head']"]
    assert np.all(np.isfinite(head)) and np.any(head != 0)

    rm = config(
        "reward",
        data,
        total_steps=60,
        eval_every=60,
        checkpoint_every=60,
        init_from=str(sft_run.sft),
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
        init_from=str(sft_run.sft),
        **{"mesh.data": 2, "mesh.fsdp": 4, "mesh.tensor": 1},
    )
    loop.train(dpo, str(runs / "dpo"))
    dpo_records = records(runs / "dpo")
    # Step 1 runs the SFT model as the policy and as the reference: every log-ratio, reward
    # and KL is exactly 0 (so every pair is a tie), and the logged log-probs are the SFT
    # model's own on the run's first batch.
    first = dpo_records[0]
    assert first["step"] == 1 and first["reward_accuracy"] == 0.0 and first["kl_ref"] == 0.0
    assert first["reward_margin"] == first["chosen_reward"] == first["rejected_reward"] == 0.0
    pairs_data = sources.DATA_PIPELINES["pairs"]
    tokenizer = Tokenizer.load(dpo.data.tokenizer)
    source = pairs_data.load_source(dpo.data, "train", tokenizer)
    batch = next(pairs_data.make_train_iterator(dpo.data, tokenizer, seed=dpo.seed, source=source))
    sft_model = latest_params(sft_run.sft)
    for side in ("chosen", "rejected"):
        logps = completion_logps(dpo.model, sft_model, batch, side)
        want = np.sum(logps * batch["valid"]) / np.sum(batch["valid"])
        assert first[f"{side}_logps"] == pytest.approx(want, rel=1e-4), side
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
        init_from=str(sft_run.sft),
        **{"objective.loss_type": "ipo", "objective.precompute_ref_logps": True},
    )
    loop.train(ipo, str(runs / "ipo"))
    ipo_inline = config(
        "dpo",
        data,
        total_steps=2,
        eval_every=0,
        checkpoint_every=2,
        init_from=str(sft_run.sft),
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
    # The scores are the reward run's checkpoint's, computed here: its output at each eos.
    want, width = last_token_scores(
        rm.model,
        latest_params(runs / "rm"),
        Tokenizer.load(rm.data.tokenizer),
        [p["prompt"] for p in pairs[:8]],
        [p["chosen"] for p in pairs[:8]],
    )
    assert width <= rm.data.seq_len  # nothing was cut
    np.testing.assert_allclose(chosen[:8], want, rtol=1e-4, atol=1e-5)

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
        timeout=HANG_GUARD_S,
        env=xla_env(devices=1),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    scored = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(s["prompt"], s["completion"]) for s in scored] == [
        (p["prompt"], p["chosen"]) for p in pairs[:3]
    ]
    np.testing.assert_allclose([s["score"] for s in scored], want[:3], rtol=1e-4, atol=1e-5)

    # Generation from the SFT checkpoint, scored by the reward model, through the CLI.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": pairs[0]["prompt"], "id": 1}) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "align_jax.generate",
        f"--workdir={sft_run.sft}",
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
        timeout=HANG_GUARD_S,
        env=xla_env(devices=1),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    samples = [json.loads(line) for line in out.stdout.splitlines()]
    assert [s["sample"] for s in samples] == [0, 1] and all(s["id"] == 1 for s in samples)
    assert samples[0]["completion"] == samples[1]["completion"]  # greedy
    assert samples[0]["finished"] and 0 < samples[0]["num_tokens"] <= 24
    want = scorer.score([pairs[0]["prompt"]], [samples[0]["completion"]])[0]
    assert samples[0]["score"] == pytest.approx(float(want), rel=1e-4, abs=1e-5)
