"""Weights & Biases logging (`config.wandb`), checked in W&B's offline mode, with no network:
the run's transaction log (`workdir/wandb/offline-run-*/run-<id>.wandb`) is read back with
W&B's own protobuf records and compared with metrics.jsonl, config.json and samples.jsonl."""

import glob
import json
import os
import struct
import sys
import time

import pytest
from tiny_runs import TINY_MODEL, read_metrics, stage_config

from align_jax import objectives
from align_jax.config import base_config
from align_jax.training import loop, wandb_log
from align_jax.training.errors import Interrupted, TrainingError
from align_jax.training.metrics import MetricsWriter

wandb = pytest.importorskip("wandb")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline and silent, with its settings, caches and staging inside tmp_path."""
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    return tmp_path


def wandb_on(config, **settings):
    """`config` logging to a W&B run in offline mode."""
    config.wandb.update({"enabled": True, "mode": "offline", "tags": "test, tiny", **settings})
    return config


def grpo_config(data_dir, total_steps):
    """GRPO from a fresh tiny model (rewards near 0, which is all this needs), logging the
    samples of 2 prompts every step, to a W&B run in offline mode."""
    c = stage_config(
        "grpo/tiny.py", data_dir, init_from="", total_steps=total_steps, log_every=1,
        eval_every=0, eval_at_start=False, checkpoint_every=2,
        **{"rewards.num_workers": 0, "objective.dynamic_sampling": False,
           "objective.num_generations": 2, "data.batch_size": 8, "rollout.max_new_tokens": 8,
           "rollout.log_samples_every": 1, "rollout.log_samples": 2},
    )  # fmt: skip
    c.model.update(TINY_MODEL)
    return wandb_on(c)


# --------------------------------------------------------------------- reading an offline run

BLOCK = 32768  # the .wandb log is LevelDB's log format: 32 KiB blocks of framed chunks
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path):
    """The protobuf records of a .wandb transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    pos, parts = 7, b""  # magic, 2-byte format id, version byte
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + n > len(data):  # still being written
            return
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (FULL, FIRST):
            parts = chunk
        elif kind in (MIDDLE, LAST):
            parts += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def _items(items) -> dict:
    """{dotted key: value} of history / summary / config items."""
    out = {}
    for item in items:
        key = ".".join(item.nested_key) if item.nested_key else item.key
        out[key] = json.loads(item.value_json)
    return out


def finished_records(path, wait_s=60.0) -> list:
    """The records of a finished run's log. `run.finish()` can return before W&B's service
    has written the file out, so wait for the record that ends it."""
    deadline = time.monotonic() + wait_s
    while True:
        records = list(read_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {wait_s} s"
        time.sleep(0.1)


def read_run(run_dir) -> dict:
    """One finished offline run: its id, name, tags, config, history rows by step, last
    summary and exit code."""
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    run = {"history": {}, "summary": {}}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["name"] = record.run.run_id, record.run.display_name
            run["tags"] = list(record.run.tags)
            run["config"] = _items(record.run.config.update)
        elif kind == "history":
            row = _items(record.history.item)
            run["history"][row["_step"]] = row
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def offline_runs(workdir) -> list[dict]:
    dirs = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))
    return [dict(read_run(d), dir=d) for d in dirs]


def metrics(history_row: dict) -> dict:
    """A history row's metrics: without W&B's own keys and the samples table."""
    return {k: v for k, v in history_row.items() if not k.startswith(("_", "samples."))}


def table_rows(run: dict, columns: list[str]) -> list[list]:
    """The rows the run logged to its `samples` table, in step order."""
    rows = []
    for step, entry in sorted(run["history"].items()):
        if "samples.path" in entry:
            assert entry["samples._type"] == "incremental-table-file"
            table = json.load(open(os.path.join(run["dir"], "files", entry["samples.path"])))
            assert table["columns"] == columns
            assert {row[0] for row in table["data"]} == {step}
            rows += table["data"]
    return rows


# ----------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_an_online_run_and_its_resume_log_to_one_wandb_run(tiny_data, offline):
    """Every metrics.jsonl record at its step, the config and the samples table, and a
    resumed run continuing the same W&B run."""
    workdir = offline / "run"
    loop.train(grpo_config(tiny_data, 2), str(workdir))
    (first,) = offline_runs(workdir)
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2]
    assert {s: metrics(row) for s, row in first["history"].items()} == {
        r["step"]: {k: v for k, v in r.items() if k != "step"} for r in records
    }
    assert first["summary"]["loss"] == records[-1]["loss"]
    config = json.load(open(workdir / "config.json"))
    assert first["config"]["total_steps"] == 2
    for key in ("optimizer", "model", "data", "objective", "rollout", "wandb"):
        assert first["config"][key] == config[key]
    assert first["name"] == "run"  # the workdir's folder name
    assert first["tags"] == ["test", "tiny"]
    assert first["exit_code"] == 0
    run_id = (workdir / "wandb" / "run_id").read_text().strip()
    assert first["id"] == run_id

    # Resumed from its step-2 checkpoint with more steps: the same W&B run continues.
    loop.train(grpo_config(tiny_data, 3), str(workdir))
    first_again, second = offline_runs(workdir)
    assert first_again["history"] == first["history"]
    assert second["id"] == run_id
    assert second["config"]["total_steps"] == 3
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert metrics(second["history"][3]) == {k: v for k, v in records[2].items() if k != "step"}
    assert second["summary"]["loss"] == records[-1]["loss"]
    assert second["exit_code"] == 0

    # The samples table: a row per completion of samples.jsonl, each step's rows logged at
    # that step (an incremental table: each log adds its new rows).
    samples = [json.loads(line) for line in open(workdir / "samples.jsonl")]
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3]
    columns, rows = wandb_log.sample_rows(samples)
    assert columns == ["step", "prompt", "completion", "total", "reward/answer_reward"]
    assert table_rows(first, columns) + table_rows(second, columns) == rows


SAMPLES = [
    {"step": 3, "prompt": "2+2=", "completions": ["4", "five"],
     "rewards": {"exact": [1.0, 0.0], "format": [None, 0.5]}, "total": [1.0, 0.5]},
    {"step": 3, "prompt": "3+3=", "completions": ["6", "6!"],
     "rewards": {"exact": [1.0, 1.0], "format": [0.5, None]}, "total": [1.5, 1.0]},
]  # fmt: skip


def test_sample_rows_are_one_per_completion():
    columns, rows = wandb_log.sample_rows(SAMPLES)
    assert columns == ["step", "prompt", "completion", "total", "reward/exact", "reward/format"]
    assert rows == [
        [3, "2+2=", "4", 1.0, 1.0, None],
        [3, "2+2=", "five", 0.5, 0.0, 0.5],
        [3, "3+3=", "6", 1.5, 1.0, 0.5],
        [3, "3+3=", "6!", 1.0, 1.0, None],
    ]


def test_samples_go_to_samples_jsonl_and_the_wandb_table(offline):
    """What an online RL stage's samples become: samples.jsonl records and the rows of the
    W&B run's `samples` table, logged at their steps; an error finishes the run failed."""
    workdir = offline / "run"
    settings = wandb_on(base_config()).wandb
    run = wandb_log.start(settings, {"total_steps": 4}, str(workdir), 0)
    writer = MetricsWriter(str(workdir), 4, 0, progress_bar=False, wandb=run)
    later = [dict(r, step=4) for r in SAMPLES[:1]]
    writer.write_samples(3, SAMPLES)
    writer.write(3, {"loss": 2.0})
    writer.write_samples(4, later)
    writer.close(ValueError("data error"))

    assert [json.loads(line) for line in open(workdir / "samples.jsonl")] == SAMPLES + later
    (logged_run,) = offline_runs(workdir)
    assert logged_run["exit_code"] == 1
    columns, rows = wandb_log.sample_rows(SAMPLES + later)
    assert table_rows(logged_run, columns) == rows
    assert logged_run["history"][3]["loss"] == 2.0


def test_an_interrupted_run_is_finished_as_preempted(offline):
    settings = wandb_on(base_config()).wandb
    run = wandb_log.start(settings, {}, str(offline / "run"), 0)
    run.log(1, {"loss": 1.0})
    run.finish(Interrupted("stopped by signal SIGTERM after step 1", 15))
    (logged_run,) = offline_runs(offline / "run")
    assert logged_run["exit_code"] == 128 + 15


def test_enabled_without_wandb_installed_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(TrainingError) as e:
        loop.train(wandb_on(objectives.config_for("pretrain")), str(tmp_path / "run"))
    message = str(e.value)
    assert "\n" not in message
    assert "config.wandb.enabled" in message and 'pip install -e ".[wandb]"' in message
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")  # it stopped before starting


def test_an_unknown_mode_names_the_key(tmp_path):
    config = wandb_on(objectives.config_for("pretrain"), mode="ofline")
    with pytest.raises(ValueError, match=r"config\.wandb\.mode='ofline'; valid values: online"):
        loop.train(config, str(tmp_path / "run"))
