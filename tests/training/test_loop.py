"""The training core end to end: a tiny run learns, resume is exact, SIGTERM, NaN, locking,
sharding agreement and gradient accumulation, on the 8-device CPU mesh."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax import checkpoint as ckpt
from align_jax import models, objectives, parallel
from align_jax.config import base_config
from align_jax.data.tokenizer import train_tokenizer
from align_jax.training import loop
from align_jax.training import step as step_lib
from align_jax.training.optimizer import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "experiments"))
from tiny_corpus import write_corpus  # noqa: E402

VOCAB = 384


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    write_corpus(d, n_train=600, n_eval=40, seed=0)
    train_tokenizer([str(d / "train.jsonl")], str(d / "tok"), VOCAB)
    return d


def tiny_config(data_dir, **overrides):
    c = base_config()
    c.total_steps = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 4
    c.async_checkpointing = False
    c.progress_bar = False
    c.mesh.update(data=2, fsdp=2, tensor=2)
    c.model.update(
        vocab_size=VOCAB,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        mlp_dim=64,
        max_seq_len=32,
    )
    c.optimizer.update(learning_rate=3e-3, warmup_steps=2, weight_decay=0.01)
    c.data.update(
        train_files=str(data_dir / "train.jsonl"),
        eval_files=str(data_dir / "eval.jsonl"),
        tokenizer=str(data_dir / "tok.model"),
        seq_len=32,
        batch_size=8,
    )
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


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
    for r in records:
        if "loss" in r:
            assert {"learning_rate", "grad_norm", "tokens_per_sec"} <= set(r)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["30", "60"]
    assert json.load(open(tmp_path / "config.json"))["model"]["d_model"] == 32
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


def test_stopped_and_resumed_run_equals_uninterrupted(data_dir, tmp_path):
    # A constant schedule, so stopping at 4 via total_steps=4 trains the same first 4 steps
    # as the 8-step run (the SIGTERM test below covers a real interruption).
    cfg = lambda n: tiny_config(data_dir, total_steps=n, **{"optimizer.schedule": "constant"})  # noqa: E731
    full, split = tmp_path / "full", tmp_path / "split"
    loop.train(cfg(8), str(full))
    loop.train(cfg(4), str(split))
    loop.train(cfg(8), str(split))
    a, b = train_losses(full), train_losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert a == b  # exactly: same data position, same RNG, same state
    steps = [r["step"] for r in read_metrics(split)]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes(data_dir, tmp_path):
    cfg = tiny_config(data_dir, total_steps=100000, checkpoint_every=100000)
    flags = [f"--config.{k}={v}" for k, v in _flatten(cfg.to_dict())]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    cmd = [
        sys.executable,
        "-m",
        "align_jax.train",
        f"--config={REPO}/configs/pretrain/tiny.py",
        f"--workdir={tmp_path}",
        *flags,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and len(metrics.read_text().splitlines()) >= 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    saved = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3
    assert "checkpoint saved" in err
    # The next run resumes from it.
    resumed = tiny_config(data_dir, total_steps=saved[0] + 2)
    loop.train(resumed, str(tmp_path))
    assert max(train_losses(tmp_path)) == saved[0] + 2


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        elif k not in ("rules",):
            yield f"{prefix}{k}", v


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    loop.train(tiny_config(data_dir, total_steps=4), str(tmp_path))
    good = ckpt.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    assert good.latest_step() == 4
    good.close()
    before = sorted(os.listdir(tmp_path / "checkpoints" / "4" / "state"))
    # An absurd learning rate blows the parameters up within a few steps.
    cfg = tiny_config(
        data_dir,
        total_steps=40,
        checkpoint_every=1,
        **{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 0},
    )
    with pytest.raises(
        loop.TrainingError,
        match=r"non-finite loss or parameters .* at step \d+.*last good checkpoint",
    ):
        loop.train(cfg, str(tmp_path))
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    # Every checkpoint that was written holds finite parameters.
    for s in saved:
        params = ckpt.load_params(str(tmp_path / "checkpoints" / str(s)), *_param_tree(cfg))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)), s
    assert sorted(os.listdir(tmp_path / "checkpoints" / "4" / "state")) == before


def _param_tree(cfg, mesh=None):
    mesh = mesh or parallel.make_mesh(cfg.mesh)
    _, shapes, axes = models.abstract_params(cfg.model)
    return shapes, models.param_shardings(shapes, axes, mesh, cfg.sharding.rules)


def test_resuming_with_another_optimizer_is_a_clear_error(data_dir, tmp_path):
    loop.train(tiny_config(data_dir, total_steps=4), str(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/4: the checkpoint does not match"):
        loop.train(tiny_config(data_dir, total_steps=8, **{"optimizer.name": "sgd"}), str(tmp_path))


def test_second_run_in_a_busy_workdir_is_refused(data_dir, tmp_path):
    with loop.workdir_lock(str(tmp_path)):
        with pytest.raises(loop.TrainingError, match="is in use by another run"):
            loop.train(tiny_config(data_dir), str(tmp_path))


def test_init_from_loads_parameters_and_names_mismatches(data_dir, tmp_path, monkeypatch):
    loop.train(tiny_config(data_dir, total_steps=4), str(tmp_path / "a"))
    cfg = tiny_config(data_dir, mesh={"data": 1, "fsdp": 8, "tensor": 1})
    shapes, shardings = _param_tree(cfg)
    monkeypatch.chdir(tmp_path)  # a relative path, as users type it
    params = ckpt.load_params("a", shapes, shardings)
    assert (
        params["layers"]["mlp"]["up_kernel"].sharding.spec
        == shardings["layers"]["mlp"]["up_kernel"].spec
    )
    wider = tiny_config(data_dir, **{"model.mlp_dim": 96})
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"'layers/mlp/down_kernel' has shape \(2, 64, 32\).*expects \(2, 96, 32\)",
    ):
        ckpt.load_params(str(tmp_path / "a"), *_param_tree(wider))
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_params(str(tmp_path / "nope"), shapes, shardings)


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
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
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
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


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
