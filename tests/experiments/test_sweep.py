"""experiments/sweep.py without training: the comma-list flags, when a run counts as finished
(and reused), the refusal to reuse a run trained with other overrides, and the table."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# experiments/ is scripts, not a package: import its modules from the folder.
sys.path.insert(0, os.path.join(REPO, "experiments"))
import sweep  # noqa: E402


def test_list_flags():
    assert sweep.floats("0.03, 0.1,1", "--x") == [0.03, 0.1, 1.0]
    assert sweep.ints("1,4,16", "--ns") == [1, 4, 16]
    assert sweep.choices("", "--y", ("a", "b")) == []
    for bad in ("0.1,x", "0,1", "", "0.1,0.1"):
        with pytest.raises(sweep.UsageError, match="--x"):
            sweep.floats(bad, "--x")
    with pytest.raises(sweep.UsageError, match="--ns"):
        sweep.ints("2,0", "--ns")
    with pytest.raises(sweep.UsageError, match="--y: unknown value 'c'"):
        sweep.choices("a,c", "--y", ("a", "b"))
    assert sweep.steps(60, 0.1) == 6 and sweep.steps(60, 0.01) == 2


def fake_run(path, logged: list[int], saved: list[int], config: dict | None = None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step in logged:
            f.write(json.dumps({"step": step, "loss": 0.5}) + "\n")
    for step in saved:
        os.makedirs(os.path.join(path, "checkpoints", str(step), "state"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config or {}, f)
    return str(path)


def test_finished(tmp_path):
    assert not sweep.finished(str(tmp_path / "none"), 6)
    run = fake_run(tmp_path / "a", [1, 4, 6], [2, 6])
    assert sweep.checkpoint_steps(run) == [2, 6]
    assert sweep.finished(run, 6)
    assert not sweep.finished(run, 10)  # resumed to the longer run
    with pytest.raises(sweep.UsageError, match="ran 6 steps, more than the 4 asked"):
        sweep.finished(run, 4)
    assert not sweep.finished(fake_run(tmp_path / "b", [1, 6], [4]), 6)  # not saved at 6
    assert sweep.final_loss(run) == 0.5


def test_check_same_config(tmp_path):
    config = {"objective": {"kl_coef": 0.02, "loss_type": "dapo", "flag": True}}
    run = fake_run(tmp_path / "a", [2], [2], config)
    same = ["--config.objective.kl_coef=0.020", "--config.objective.loss_type=dapo"]
    sweep.check_same_config(run, [*same, "--config.total_steps=99"])
    sweep.check_same_config(str(tmp_path / "new"), ["--config.objective.kl_coef=5"])
    with pytest.raises(sweep.UsageError, match="objective.kl_coef=0.02, not 0.05"):
        sweep.check_same_config(run, ["--config.objective.kl_coef=0.05"])
    with pytest.raises(sweep.UsageError, match="loss_type=dapo, not grpo"):
        sweep.check_same_config(run, ["--config.objective.loss_type=grpo"])


def test_markdown_leaves_out_empty_columns():
    columns = (("a", "A", ""), ("b", "B", ".2f"), ("c", "C", ""))
    text = sweep.markdown(columns, [{"a": "x", "b": 0.123}, {"a": "y"}])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| x | 0.12 |", "| y | - |"]
