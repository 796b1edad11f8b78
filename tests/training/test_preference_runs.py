"""Tiny end-to-end runs of the listwise, KTO and SimPO stages from the session's SFT run
(`sft_run`, tests/conftest.py), each improving its held-out metric over the SFT model's;
then the DPO ablation tool over two loss types through the CLI."""

import json
import math
import os
import sys

import jax
import pytest
from tiny_runs import REPO, stage_config, xla_env

from align_jax import loading, objectives, parallel
from align_jax.data.tokenizer import Tokenizer
from align_jax.training import loop, sources
from align_jax.training import step as step_lib

sys.path.insert(0, os.path.join(REPO, "tools"))
import ablate_dpo  # noqa: E402

pytestmark = pytest.mark.slow


def config(name, data_dir, **kw):
    return stage_config(name, data_dir, log_every=5, **kw)


def last_eval(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "eval_loss" in r][-1]


def held_out_at_init(cfg):
    """The objective's held-out metrics for the init_from model (before any update), through
    the loop's own evaluation."""
    _, graphdef, params, mesh = loading.load_run(cfg.init_from)
    objective = objectives.build(cfg, graphdef)
    data = sources.DATA_PIPELINES[objective.batch_kind]
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    source = data.load_source(cfg.data, "eval", tokenizer)
    frozen = {"reference": params} if objective.needs_reference else None
    with parallel.sharding_context(mesh, tuple(tuple(r) for r in cfg.sharding.rules)):
        eval_step = jax.jit(step_lib.make_eval_step(objective))
        return loop.evaluate(
            cfg, objective, eval_step, data, tokenizer, source, {"params": params}, frozen, {}
        )


def run(name, data, init_from, workdir, **kw):
    """(first train record, last eval record) of a 20-step run."""
    cfg = config(name, data, total_steps=20, eval_every=20, checkpoint_every=20, **kw)
    cfg.init_from = str(init_from)
    loop.train(cfg, str(workdir))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    return cfg, first, last_eval(workdir)


def test_listwise_plackett_luce_run(sft_run, tmp_path):
    data, sft_dir = sft_run.data, sft_run.sft
    _, first, after = run(
        "dpo/listwise_tiny.py", data, sft_dir, tmp_path / "lw", **{"mesh.data": 2, "mesh.fsdp": 4}
    )
    # At init policy == reference: every u_k = 0, so a list of n responses has loss log n!
    # (the held-out loss before training), and every ordered pair is a tie, not correct.
    with open(data / "lists_eval.jsonl") as f:
        sizes = [min(len(json.loads(line)["responses"]), 3) for line in f]
    before = sum(math.lgamma(n + 1) for n in sizes) / len(sizes)
    assert first["ranking_accuracy"] == 0.0 and first["kl_ref"] == 0.0
    assert after["eval_loss"] < before - 0.2, (before, after)
    assert after["eval_ranking_accuracy"] > 0.6, after
    assert after["eval_reward_margin"] > 0 and after["eval_kl_ref"] > 0


def test_kto_run(sft_run, tmp_path):
    data, sft_dir = sft_run.data, sft_run.sft
    _, first, after = run("dpo/kto_tiny.py", data, sft_dir, tmp_path / "kto")
    # At init ρ = 0 and z0 = 0: every example's loss is 1 − σ(0) = 0.5 (unit weights), the
    # held-out loss before training too.
    assert first["loss"] == pytest.approx(0.5, abs=1e-6) and first["kl"] == 0.0
    assert after["eval_loss"] < 0.5 - 0.03, after
    assert after["eval_chosen_reward"] > after["eval_rejected_reward"], after
    assert "eval_kl" in after and after["eval_kl_ref"] > 0


def test_simpo_run(sft_run, tmp_path):
    data, sft_dir = sft_run.data, sft_run.sft
    cfg = config("dpo/simpo_tiny.py", data, init_from=str(sft_dir))
    before = held_out_at_init(cfg)  # no closed form without a reference: evaluate the SFT model
    _, _, after = run("dpo/simpo_tiny.py", data, sft_dir, tmp_path / "simpo")
    assert after["eval_loss"] < before["loss"], (before, after)
    assert after["eval_reward_margin"] > before["reward_margin"], (before, after)
    assert after["eval_reward_accuracy"] >= before["reward_accuracy"]


def test_ablation_tool_writes_one_table(sft_run, tmp_path, monkeypatch, capsys):
    data, sft_dir = sft_run.data, sft_run.sft
    monkeypatch.setenv("XLA_FLAGS", xla_env(devices=1)["XLA_FLAGS"])  # the CLI: one device
    workdir = tmp_path / "ablate"
    code = ablate_dpo.main(
        [
            f"--config={REPO}/configs/dpo/tiny.py:{data}",
            f"--init_from={sft_dir}",
            "--loss_types=sigmoid,ipo",
            f"--workdir={workdir}",
            "--set=total_steps=4",
            "--set=eval_every=4",
            "--set=log_every=2",
            "--set=progress_bar=False",
        ]
    )
    assert code == 0
    table = (workdir / "ablation.md").read_text()
    assert table in capsys.readouterr().out  # the printed table is the written one
    lines = table.splitlines()
    assert lines[0].startswith("| loss type | final train loss | held-out reward accuracy")
    rows = json.loads((workdir / "ablation.json").read_text())
    assert [row["loss_type"] for row in rows] == ["sigmoid", "ipo"]
    for row, line in zip(rows, lines[2:], strict=True):
        run_dir = workdir / row["loss_type"]
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if "loss" in r]
        evals = [r for r in records if "eval_loss" in r]
        assert [r["step"] for r in train] == [1, 2, 4] and [r["step"] for r in evals] == [4]
        assert row["returncode"] == 0 and row["steps"] == 4 and row["wall_s"] > 0
        # Every number is the run's own: the last train record, the last eval record, and
        # tokens/s as the median of the train records after the first (steps 2 and 4).
        want = {
            "train_loss": train[-1]["loss"],
            **{k: evals[-1][k] for k in ("eval_reward_accuracy", "eval_reward_margin")},
            "eval_kl_ref": evals[-1]["eval_kl_ref"],
            "tokens_per_sec": (train[1]["tokens_per_sec"] + train[2]["tokens_per_sec"]) / 2,
        }
        assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-12)
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert cells[0] == row["loss_type"]
        # The table's cells print those numbers to 4 significant digits (whole from 1000 on).
        for cell, value in zip(cells[1:], [*want.values(), row["wall_s"]], strict=True):
            tolerance = 0.5 if abs(value) >= 1000 else 5e-4 * abs(value)
            assert abs(float(cell) - value) <= tolerance, (cell, value)
        assert want["eval_kl_ref"] > 0  # 4 steps moved the policy off the reference
        # Step 1 is at policy == reference (both the SFT model): every log-ratio is 0, so
        # the loss has its closed form, and no reward, margin or KL is anything but 0.
        beta = json.loads((run_dir / "config.json").read_text())["objective"]["beta"]
        closed_form = {"sigmoid": math.log(2.0), "ipo": (1.0 / (2.0 * beta)) ** 2}
        first = train[0]
        assert first["loss"] == pytest.approx(closed_form[row["loss_type"]], rel=1e-6)
        assert first["reward_margin"] == 0.0 and first["chosen_reward"] == 0.0
        assert first["reward_accuracy"] == 0.0 and first["kl_ref"] == 0.0
