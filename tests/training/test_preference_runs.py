"""Tiny end-to-end runs of the listwise, KTO and SimPO stages from an SFT checkpoint trained
here (pretrain -> sft, few steps), each improving its held-out metric over the SFT model's;
then the DPO ablation tool over two loss types through the CLI."""

import importlib.util
import json
import math
import os
import sys

import jax
import pytest

from align_jax import checkpoint as ckpt
from align_jax import objectives, parallel
from align_jax.data.tokenizer import Tokenizer, train_tokenizer
from align_jax.training import loop
from align_jax.training import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "experiments"))
sys.path.insert(0, os.path.join(REPO, "tools"))
import ablate_dpo  # noqa: E402
from tiny_corpus import write_corpus  # noqa: E402
from tiny_tasks import write_tasks  # noqa: E402


def config(name, data_dir, **kw):
    path = os.path.join(REPO, "configs", name)
    spec = importlib.util.spec_from_file_location("cfg_" + name.replace("/", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(str(data_dir))
    c.update(log_every=5, progress_bar=False, async_checkpointing=False)
    c.data.prefetch_batches = 0
    for key, value in kw.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def last_eval(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "eval_loss" in r][-1]


def held_out_at_init(cfg):
    """The objective's held-out metrics for the init_from model (before any update), through
    the loop's own evaluation."""
    _, graphdef, params, mesh = ckpt.load_run(cfg.init_from)
    objective = objectives.build(cfg, graphdef)
    data = loop.DATA_PIPELINES[objective.batch_kind]
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    source = data.load_source(cfg.data, "eval", tokenizer)
    frozen = params if objective.needs_reference else None
    with parallel.sharding_context(mesh, tuple(tuple(r) for r in cfg.sharding.rules)):
        eval_step = jax.jit(step_lib.make_eval_step(objective))
        return loop.evaluate(
            cfg, objective, eval_step, data, tokenizer, source, {"params": params}, frozen, {}
        )


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """(data dir, SFT workdir): a tiny pretrain -> sft chain."""
    root = tmp_path_factory.mktemp("pref")
    data, runs = root / "data", root / "runs"
    write_corpus(data, n_train=1000, n_eval=20, seed=0)
    write_tasks(data, n_train=400, n_eval=64, seed=0)
    train_tokenizer([str(data / "train.jsonl")], str(data / "tok"), 512)
    short = {"eval_every": 0, "checkpoint_every": 1000, "data.seq_len": 64}
    loop.train(config("pretrain/tiny.py", data, total_steps=40, **short), str(runs / "pre"))
    sft_cfg = config("sft/tiny.py", data, total_steps=40, init_from=str(runs / "pre"), **short)
    loop.train(sft_cfg, str(runs / "sft"))
    return data, runs / "sft"


def run(name, data, init_from, workdir, **kw):
    """(first train record, last eval record) of a 20-step run."""
    cfg = config(name, data, total_steps=20, eval_every=20, checkpoint_every=20, **kw)
    cfg.init_from = str(init_from)
    loop.train(cfg, str(workdir))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    return cfg, first, last_eval(workdir)


def test_listwise_plackett_luce_run(sft, tmp_path):
    data, sft_dir = sft
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


def test_kto_run(sft, tmp_path):
    data, sft_dir = sft
    _, first, after = run("dpo/kto_tiny.py", data, sft_dir, tmp_path / "kto")
    # At init ρ = 0 and z0 = 0: every example's loss is 1 − σ(0) = 0.5 (unit weights), the
    # held-out loss before training too.
    assert first["loss"] == pytest.approx(0.5, abs=1e-6) and first["kl"] == 0.0
    assert after["eval_loss"] < 0.5 - 0.03, after
    assert after["eval_chosen_reward"] > after["eval_rejected_reward"], after
    assert "eval_kl" in after and after["eval_kl_ref"] > 0


def test_simpo_run(sft, tmp_path):
    data, sft_dir = sft
    cfg = config("dpo/simpo_tiny.py", data, init_from=str(sft_dir))
    before = held_out_at_init(cfg)  # no closed form without a reference: evaluate the SFT model
    _, _, after = run("dpo/simpo_tiny.py", data, sft_dir, tmp_path / "simpo")
    assert after["eval_loss"] < before["loss"], (before, after)
    assert after["eval_reward_margin"] > before["reward_margin"], (before, after)
    assert after["eval_reward_accuracy"] >= before["reward_accuracy"]


def test_ablation_tool_writes_one_table(sft, tmp_path, monkeypatch, capsys):
    data, sft_dir = sft
    monkeypatch.setenv("XLA_FLAGS", "")  # the CLI runs on one device
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
    table = (workdir / "ablation.md").read_text().splitlines()
    assert table[0].startswith("| loss type | final train loss | held-out reward accuracy")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["sigmoid", "ipo"]
    rows = json.loads((workdir / "ablation.json").read_text())
    for row in rows:
        assert row["returncode"] == 0 and row["steps"] == 4
        assert 0.0 <= row["eval_reward_accuracy"] <= 1.0 and row["tokens_per_sec"] > 0
        assert row["eval_kl_ref"] > 0 and row["wall_s"] > 0
    assert rows[0]["train_loss"] != rows[1]["train_loss"]
    assert "| sigmoid |" in capsys.readouterr().out
