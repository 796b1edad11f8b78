"""The training core end to end: a tiny run learns, resume is exact, SIGTERM, NaN, locking,
sharding agreement and gradient accumulation, on the 8-device CPU mesh."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_runs import (
    HANG_GUARD_S,
    REPO,
    VOCAB,
    checkpoint_steps,
    constant_lr,
    copy_run,
    read_metrics,
    read_params,
    scheduled_lr,
    tiny_config,
    train_losses,
    xla_env,
)

from align_jax import checkpoint as ckpt
from align_jax import loading, models, objectives, parallel
from align_jax.training import init as init_lib
from align_jax.training import loop
from align_jax.training import step as step_lib
from align_jax.training.optimizer import make_optimizer
from align_jax.tree import flatten


@pytest.fixture
def data_dir(tiny_data):
    return tiny_data


@pytest.mark.slow
def test_tiny_pretraining_run_learns_and_writes_its_workdir(data_dir, tmp_path):
    cfg = tiny_config(
        data_dir,
        total_steps=60,
        log_every=10,
        eval_every=30,
        checkpoint_every=30,
        **{"optimizer.learning_rate": 1e-2},
    )
    loop.train(cfg, str(tmp_path))
    losses = train_losses(tmp_path)
    assert sorted(losses) == [1, 10, 20, 30, 40, 50, 60]
    assert losses[1] == pytest.approx(math.log(VOCAB), abs=0.3)
    # Random init starts at about ln(V) = 5.5 nats; the grammar is learnable far below that.
    assert losses[60] < 0.55 * math.log(VOCAB), losses
    records = read_metrics(tmp_path)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert evals[1]["eval_perplexity"] == pytest.approx(math.exp(evals[1]["eval_loss"]), rel=1e-6)
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    opt = cfg.optimizer
    schedule = dict(
        lr=opt.learning_rate, warmup=opt.warmup_steps, total=cfg.total_steps,
        end_factor=opt.end_lr_factor, kind=opt.schedule,
    )  # fmt: skip
    for r in records:
        if "loss" in r:
            assert {"learning_rate", "grad_norm", "tokens_per_sec"} <= set(r)
            # Step s is logged after update s - 1 (warmup from 0, then cosine decay).
            want = scheduled_lr(r["step"] - 1, **schedule)
            assert r["learning_rate"] == pytest.approx(want, rel=1e-6, abs=1e-12), r["step"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["30", "60"]
    assert json.load(open(tmp_path / "config.json"))["model"]["d_model"] == 32
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_uninterrupted(data_dir, base_run, full_run, tmp_path):
    # base_run is this config stopped at 4 by total_steps=4 (tests/training/test_interrupts.py
    # stops runs by signals, damaged checkpoints and a full disk).
    split = copy_run(base_run, tmp_path / "split")
    loop.train(constant_lr(data_dir, 8), str(split))
    b = train_losses(split)
    assert sorted(b) == list(range(1, 9))
    assert b == {s: v for s, v in train_losses(full_run).items() if s <= 8}  # exactly
    steps = [r["step"] for r in read_metrics(split)]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, base_run, tmp_path):
    workdir = copy_run(base_run, tmp_path / "run")  # checkpoints at steps 2 and 4
    good, records = read_params(workdir, 4), read_metrics(workdir)
    # Resumed at 4 with an absurd learning rate, step 5's update overflows the parameters
    # (param_norm = inf). Logging and saving every 3 steps, step 5 is neither logged nor
    # saved: only the check deferred to after step 6 is dispatched sees it, and must stop
    # before step 6 is logged or saved.
    cfg = constant_lr(
        data_dir, 12, log_every=3, checkpoint_every=3,
        **{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 0},
    )  # fmt: skip
    with pytest.raises(
        loop.TrainingError,
        match=r"non-finite loss or parameters \(.*\) at step 5: stopping; "
        r"the last good checkpoint \(step 4\) is kept",
    ):
        loop.train(cfg, str(workdir))
    assert checkpoint_steps(workdir) == [2, 4]
    jax.tree.map(np.testing.assert_array_equal, read_params(workdir, 4), good)  # bit for bit
    assert read_metrics(workdir) == records  # nothing logged after step 4


def _param_tree(cfg, mesh=None):
    mesh = mesh or parallel.make_mesh(cfg.mesh)
    _, shapes, axes = models.abstract_params(cfg.model)
    return shapes, models.param_shardings(shapes, axes, mesh, cfg.sharding.rules)


@pytest.mark.slow
def test_resuming_with_another_optimizer_is_a_clear_error(data_dir, base_run, tmp_path):
    workdir = copy_run(base_run, tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/4: the checkpoint does not match"):
        loop.train(tiny_config(data_dir, total_steps=8, **{"optimizer.name": "sgd"}), str(workdir))


def test_second_run_in_a_busy_workdir_is_refused(data_dir, tmp_path):
    with loop.workdir_lock(str(tmp_path)):
        with pytest.raises(loop.TrainingError, match="is in use by another run"):
            loop.train(tiny_config(data_dir), str(tmp_path))


def test_init_from_loads_parameters_and_names_mismatches(data_dir, tmp_path, monkeypatch, caplog):
    loop.train(tiny_config(data_dir, total_steps=4), str(tmp_path / "a"))
    # The source values, read by Orbax itself as host arrays (no align_jax loading code).
    state_dir = tmp_path / "a" / "checkpoints" / "4" / "state"
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), ckpt.stored_tree(state_dir)
    )
    stored = flatten(
        ocp.PyTreeCheckpointer().restore(
            str(state_dir), args=ocp.args.PyTreeRestore(restore_args=as_numpy)
        )["params"]
    )
    # Another mesh than the one that wrote it (2x2x2), and a relative path, as users type it.
    cfg = tiny_config(data_dir, mesh={"data": 1, "fsdp": 8, "tensor": 1})
    shapes, shardings = _param_tree(cfg)
    monkeypatch.chdir(tmp_path)
    params = flatten(loading.load_params("a", shapes, shardings))
    assert params.keys() == stored.keys()
    for path, value in stored.items():
        assert params[path].sharding.spec == flatten(shardings)[path].spec, path
        assert params[path].dtype == value.dtype, path
        np.testing.assert_array_equal(np.asarray(params[path]), value, err_msg=str(path))

    # A reward model on this LM: the backbone comes from the checkpoint bit for bit, the new
    # score head is the seed's fresh initialisation, and the log says both that and what
    # went unused (the LM head).
    rm = tiny_config(data_dir, mesh={"data": 1, "fsdp": 8, "tensor": 1}, **{"model.head": "scalar"})
    rm.init_from = "a"
    mesh = parallel.make_mesh(rm.mesh)
    rules = tuple(tuple(r) for r in rm.sharding.rules)
    rm_shapes, rm_shardings = _param_tree(rm, mesh)
    with parallel.sharding_context(mesh, rules), caplog.at_level("INFO", logger="align_jax"):
        got = flatten(init_lib.initial_params(rm, rm_shapes, rm_shardings, mesh, rules, lora=False))
        fresh = flatten(models.init_params(rm.model, mesh, rules, rm.seed)[1])
    assert got.keys() == fresh.keys() == (stored.keys() - {("lm_head",)}) | {("score_head",)}
    for path, value in got.items():
        want = fresh[path] if path == ("score_head",) else stored[path]
        np.testing.assert_array_equal(np.asarray(value), np.asarray(want), err_msg=str(path))
    assert np.abs(np.asarray(got[("score_head",)])).max() > 0  # drawn, not a zero default
    assert "newly initialised (not in the checkpoint): score_head" in caplog.text
    assert "checkpoint parameters not used: lm_head" in caplog.text

    wider = tiny_config(data_dir, **{"model.mlp_dim": 96})
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"'layers/mlp/down_kernel' has shape \(2, 64, 32\).*expects \(2, 96, 32\)",
    ):
        loading.load_params(str(tmp_path / "a"), *_param_tree(wider))
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        loading.load_params(str(tmp_path / "nope"), shapes, shardings)


def _synthetic_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b, length = cfg.data.batch_size, cfg.data.seq_len
    inputs = rng.integers(0, cfg.model.vocab_size, (b, length), dtype=np.int32)
    # Ragged masks: micro-batches hold different token counts, which is where a
    # mean-of-means accumulation would go wrong.
    lengths = rng.integers(3, length, b)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
    return {
        "inputs": inputs,
        "targets": np.roll(inputs, -1, axis=1),
        "segment_ids": np.ones((b, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
        "loss_mask": mask,
    }


def _run_step(cfg, mesh, batch, accum=1):
    rules = cfg.sharding.rules
    graphdef, params, shardings = models.init_params(cfg.model, mesh, rules, 0)
    objective = objectives.build(cfg, graphdef)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.total_steps)
    state_sh = step_lib.state_shardings(tx, jax.eval_shape(lambda: params), shardings, mesh)
    state = step_lib.init_state(tx, params, state_sh)
    batch_sh = step_lib.batch_shardings(batch, mesh, rules)
    with parallel.sharding_context(mesh, rules):
        grads = jax.jit(jax.grad(lambda p, b: objective.loss_fn(p, None, b, None)[0]))(
            params, jax.device_put(batch, batch_sh)
        )
        fn = step_lib.jit_train_step(
            step_lib.make_train_step(objective, tx, schedule, accum), state_sh, batch_sh, mesh
        )
        new_state, metrics = fn(state, jax.device_put(batch, batch_sh), jax.random.key(0), None)
    return jax.device_get(grads), jax.device_get(new_state["params"]), jax.device_get(metrics)


def test_loss_and_gradients_agree_across_meshes(data_dir, devices):
    cfg = tiny_config(data_dir, **{"optimizer.warmup_steps": 0})
    batch = _synthetic_batch(cfg)
    one = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices[:1])
    ref = _run_step(cfg, one, batch)
    for shape in ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 1, "fsdp": 8, "tensor": 1}):
        out = _run_step(cfg, parallel.make_mesh(shape), batch)
        np.testing.assert_allclose(out[2]["loss"], ref[2]["loss"], rtol=1e-6)
        jax.tree.map(_close, out[0], ref[0])  # gradients
        jax.tree.map(_close, out[1], ref[1])  # parameters after the AdamW update


def _close(a, b, rel=1e-4):
    """Equal to float tolerance, measured against the tensor's own scale (summation order
    differs across meshes, so entries near zero differ by a few ulps of the largest)."""
    np.testing.assert_allclose(a, b, rtol=rel, atol=rel * float(np.max(np.abs(b))))


def test_gradient_accumulation_equals_one_big_batch(data_dir, devices):
    # SGD without momentum: the update is -lr * gradient, so comparing updates compares the
    # accumulated gradient itself (AdamW's g / sqrt(v) would amplify float noise near 0).
    cfg = tiny_config(
        data_dir,
        **{
            "optimizer.warmup_steps": 0,
            "optimizer.name": "sgd",
            "optimizer.momentum": 0.0,
            "optimizer.weight_decay": 0.0,
            "optimizer.learning_rate": 1.0,
        },
    )
    batch = _synthetic_batch(cfg, seed=1)
    mesh = parallel.make_mesh(cfg.mesh)
    _, init, _ = models.init_params(cfg.model, mesh, cfg.sharding.rules, 0)
    _, params1, m1 = _run_step(cfg, mesh, batch, accum=1)
    _, params4, m4 = _run_step(cfg, mesh, batch, accum=4)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    delta = lambda new: jax.tree.map(
        lambda a, b: np.asarray(a) - np.asarray(b), new, jax.device_get(init)
    )  # noqa: E731
    jax.tree.map(lambda a, b: _close(a, b, 1e-4), delta(params4), delta(params1))
    # The per-micro-batch mean (the bug) would differ: check the batch makes that visible.
    mask = batch["loss_mask"].reshape(2, 4, -1).swapaxes(0, 1).sum((1, 2))
    assert len(set(mask.tolist())) > 1


def test_unknown_objective_and_loss_type_list_the_valid_ones(data_dir):
    graphdef, _, _ = models.abstract_params(tiny_config(data_dir).model)
    with pytest.raises(
        ValueError,
        match=r"config.objective.name 'dpoo' is unknown; valid objectives: \[.*'pretrain'",
    ):
        objectives.build(tiny_config(data_dir, **{"objective.name": "dpoo"}), graphdef)
    with pytest.raises(ValueError, match=r"loss_type 'ce' is not valid .* \['cross_entropy'\]"):
        objectives.build(tiny_config(data_dir, **{"objective.loss_type": "ce"}), graphdef)


def _cli(tmp_path, *extra, data_dir):
    env = xla_env()
    cmd = [
        sys.executable,
        "-m",
        "align_jax.train",
        f"--config={REPO}/configs/pretrain/tiny.py:{data_dir}",
        f"--workdir={tmp_path}",
        "--config.total_steps=2",
        "--config.model.n_layers=1",
        *extra,
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_errors(data_dir, tmp_path):
    out = _cli(tmp_path / "a", "--config.optimizer.nope=1", data_dir=data_dir)
    assert out.returncode != 0 and "nope" in out.stderr
    out = _cli(
        tmp_path / "b", f"--config.data.tokenizer={tmp_path}/missing.model", data_dir=data_dir
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.model" in out.stderr
    )
    assert "Traceback" not in out.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    out = _cli(tmp_path / "c", f"--config.data.train_files={bad}", data_dir=data_dir)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and f"{bad}:2" in last and "Traceback" not in out.stderr, out.stderr[
        -1500:
    ]
