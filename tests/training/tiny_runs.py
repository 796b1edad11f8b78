"""What the training tests share: tiny run configs, reading a workdir back (metrics.jsonl, the
checkpoint step folders, a checkpoint's parameters as host arrays), synthetic batches of each
kind, and one train step on a given mesh.

The session's shared runs (tests/conftest.py) are built from these configs; a test that
writes to one copies its workdir first (`copy_run`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from align_jax import cli, models, objectives, parallel
from align_jax.training import step as step_lib
from align_jax.training.optimizer import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "experiments"))  # tiny_corpus, tiny_tasks

VOCAB = 384  # the tiny tokenizer `tiny_data` trains
# How long a test waits for a subprocess before calling it hung. Not a performance limit:
# on a loaded machine a tiny run takes minutes, and a test waits for it however slow.
HANG_GUARD_S = 1800
# A model small enough that a train step compiles in seconds; its vocabulary covers VOCAB.
TINY_MODEL = dict(
    vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
    max_seq_len=32,
)  # fmt: skip


def make_mesh(data=1, fsdp=1, tensor=1):
    """A (data, fsdp, tensor) mesh over the first data·fsdp·tensor simulated devices."""
    n = data * fsdp * tensor
    return parallel.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, jax.devices()[:n])


def xla_env(devices: int = 8, **extra) -> dict:
    """This process's environment for a child JAX process on `devices` simulated CPU devices,
    keeping the test session's other XLA flags (tests/conftest.py)."""
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    return dict(os.environ, XLA_FLAGS=" ".join(flags.split()), **extra)


def set_keys(config, overrides: dict):
    """`{"optimizer.learning_rate": 1e-3, "total_steps": 4}` applied to a ConfigDict."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def tiny_config(data_dir, objective: str = "pretrain", **overrides):
    """A seconds-long run of the tiny model on the `tiny_data` corpus: 8 steps logged every
    step, a checkpoint every 4, synchronous saves, a 2x2x2 mesh."""
    c = objectives.config_for(objective)
    c.total_steps = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 4
    c.async_checkpointing = False
    c.progress_bar = False
    c.mesh.update(data=2, fsdp=2, tensor=2)
    c.model.update(TINY_MODEL)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=2, weight_decay=0.01)
    c.data.update(
        train_files=str(data_dir / "train.jsonl"),
        eval_files=str(data_dir / "eval.jsonl"),
        tokenizer=str(data_dir / "tok.model"),
        seq_len=32,
        batch_size=8,
    )
    return set_keys(c, overrides)


def stage_config(name: str, data_dir, **overrides):
    """`configs/<name>` on the data in `data_dir`, with synchronous saves and no progress bar
    or prefetch thread, then `overrides`."""
    c = cli.load_config(f"{os.path.join(REPO, 'configs', name)}:{data_dir}")
    c.update(progress_bar=False, async_checkpointing=False)
    c.data.prefetch_batches = 0
    return set_keys(c, overrides)


def constant_lr(data_dir, total_steps, **overrides):
    """`tiny_config` with a constant schedule: the first k steps of a run of any length are
    the same, so a run stopped at k (by total_steps or a signal) continues the longer one,
    and `full_run` (tests/conftest.py) is every such run's uninterrupted reference."""
    return tiny_config(
        data_dir, total_steps=total_steps, **{"optimizer.schedule": "constant", **overrides}
    )


def cli_flags(config) -> list[str]:
    """`config` as `--config.KEY=VALUE` flags for `python -m align_jax.train`."""

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            elif k != "rules":
                yield f"--config.{prefix}{k}={v}"

    return list(walk(config.to_dict()))


def copy_run(src, dst):
    """A copy of the run in `src` at `dst`, to resume or change without touching `src`."""
    shutil.copytree(src, dst)
    return dst


def scheduled_lr(t: int, *, lr, warmup, total, end_factor, kind) -> float:
    """The learning rate of update t (from step t to t + 1), written out: linear warmup from
    0, then cosine or linear decay to end_factor * lr at `total`, flat after."""
    if t < warmup:
        return lr * t / warmup
    frac = min(t - warmup, total - warmup) / (total - warmup)
    end = end_factor * lr
    if kind == "cosine":
        return end + (lr - end) * (1 + math.cos(math.pi * frac)) / 2
    assert kind == "linear", kind
    return lr + (end - lr) * frac


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


# Metrics that measure this machine, not the run.
TIMING = ("time/", "tokens_per_sec", "model_tflops_per_sec", "mfu", "generated_tokens_per_sec")


def run_records(workdir) -> dict[int, dict]:
    """step -> the train record of metrics.jsonl, timings left out (what two runs that
    should agree must log alike)."""
    return {
        r["step"]: {k: v for k, v in r.items() if not k.startswith(TIMING)}
        for r in read_metrics(workdir)
        if "loss" in r
    }


def checkpoint_steps(workdir) -> list[int]:
    """The steps with a committed checkpoint folder in `workdir/checkpoints` (none yet: [])."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(s) for s in os.listdir(folder) if s.isdigit())


def read_params(workdir, step: int) -> dict:
    """A checkpoint's parameters as numpy arrays, read by Orbax itself (no align_jax code)."""
    state = epath.Path(os.path.abspath(workdir)) / "checkpoints" / str(step) / "state"
    meta = ocp.PyTreeCheckpointHandler().metadata(state)
    tree = getattr(meta, "tree", meta)
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    args = ocp.args.PyTreeRestore(restore_args=as_numpy)
    return ocp.PyTreeCheckpointer().restore(state, args=args)["params"]


# ----------------------------------------------------------------------------- synthetic batches


def token_batch(b=8, length=16, vocab=64, seed=0, prompt_max=0):
    """Pretraining / SFT rows with ragged loss masks (micro-batches hold different token
    counts). `prompt_max` > 0 leaves the first 1..prompt_max targets of each row out of the
    loss, as SFT masks prompts."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, vocab, (b, length), dtype=np.int32)
    ends = rng.integers(3, length, b)
    starts = rng.integers(1, prompt_max + 1, b) if prompt_max else np.zeros(b, int)
    pos = np.arange(length)[None]
    mask = ((pos >= starts[:, None]) & (pos < ends[:, None])).astype(np.float32)
    return {
        "inputs": inputs,
        "targets": np.roll(inputs, -1, axis=1),
        "segment_ids": np.ones((b, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
        "loss_mask": mask,
    }


def _rows(rng, n_rows, length, vocab):
    """Right-padded rows: tokens, completion mask (after a 2-4 token prompt), segment ids."""
    ends = rng.integers(6, length + 1, n_rows)
    prompts = rng.integers(2, 5, n_rows)
    pos = np.arange(length)[None]
    real = pos < ends[:, None]
    tokens = np.where(real, rng.integers(1, vocab, (n_rows, length)), 0).astype(np.int32)
    mask = (real & (pos >= prompts[:, None])).astype(np.float32)
    return tokens, mask, real.astype(np.int32)


def pair_batch(valid, length=12, vocab=64, seed=0):
    """Preference pairs (reward model, DPO family), one per entry of `valid`."""
    rng = np.random.default_rng(seed)
    b = len(valid)
    out = {}
    for side in ("chosen", "rejected"):
        tokens, mask, segments = _rows(rng, b, length, vocab)
        out.update({f"{side}_tokens": tokens, f"{side}_mask": mask})
        out[f"{side}_segment_ids"] = segments
    out.update(
        margin=rng.uniform(0, 1, b).astype(np.float32),
        label=np.ones(b, np.float32),
        valid=np.asarray(valid, np.float32),
        index=np.arange(b, dtype=np.int32),
    )
    return out


def list_batch(valid, sizes, k=3, length=12, vocab=64, seed=0):
    """Ranked lists of `sizes[i]` <= k responses (padded to k rows), best first."""
    rng = np.random.default_rng(seed)
    b = len(valid)
    tokens, mask, segments = _rows(rng, b * k, length, vocab)
    list_mask = (np.arange(k)[None] < np.asarray(sizes)[:, None]).astype(np.float32)
    rows = np.repeat(list_mask.reshape(-1, 1), length, axis=1)
    ranks = np.where(list_mask > 0, np.arange(1, k + 1)[None], 0).astype(np.int32)
    return {
        "tokens": (tokens * rows).astype(np.int32).reshape(b, k, length),
        "mask": (mask * rows).reshape(b, k, length),
        "segment_ids": (segments * rows).astype(np.int32).reshape(b, k, length),
        "list_mask": list_mask,
        "ranks": ranks,
        "scores": np.where(list_mask > 0, -np.arange(k, dtype=np.float32)[None], 0.0),
        "valid": np.asarray(valid, np.float32),
        "index": np.arange(b, dtype=np.int32),
    }


# ----------------------------------------------------------------------------- one train step


# A power of two, so the update -lr * g is exact, and large, so that (before - after) / lr
# recovers g to float32 precision even where it is far below the parameter's own ulp.
SGD_LR = 2.0**20


def sgd_config(objective: str, **model):
    """`objective` on a small model (`model` overrides it) under plain SGD (no momentum,
    decay, clipping or warmup): a step's parameter change is -SGD_LR times its gradient."""
    cfg = objectives.config_for(objective)
    cfg.model.update({**TINY_MODEL, "vocab_size": 64, **model})
    cfg.optimizer.update(
        name="sgd", learning_rate=SGD_LR, schedule="constant", warmup_steps=0, momentum=0.0,
        weight_decay=0.0, grad_clip_norm=0.0,
    )  # fmt: skip
    return cfg


class StepResult(NamedTuple):
    metrics: dict  # name -> float, as the train step reports them
    grads: dict  # under `sgd_config`: (params before - params after) / SGD_LR, float64
    params: dict  # the parameters the step started from


def run_step(cfg, mesh, batch, accum: int = 1, reference_seed: int | None = None) -> StepResult:
    """One jitted train step from the seed-0 initialisation on `mesh`, in host values. With
    `reference_seed`, a second initialisation is the frozen reference."""
    rules = tuple(tuple(r) for r in cfg.sharding.rules)
    graphdef, params, shardings = models.init_params(cfg.model, mesh, rules, 0)
    frozen = frozen_shardings = None
    if reference_seed is not None:
        frozen = {"reference": models.init_params(cfg.model, mesh, rules, reference_seed)[1]}
        frozen_shardings = {"reference": shardings}
    objective = objectives.build(cfg, graphdef)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.total_steps)
    state_sh = step_lib.state_shardings(tx, jax.eval_shape(lambda: params), shardings, mesh)
    state = step_lib.init_state(tx, params, state_sh)
    before = jax.device_get(params)
    batch_sh = step_lib.batch_shardings(batch, mesh, rules)
    with parallel.sharding_context(mesh, rules):
        step = step_lib.make_train_step(objective, tx, schedule, accum)
        fn = step_lib.jit_train_step(step, state_sh, batch_sh, mesh, frozen_shardings)
        state, metrics = fn(state, jax.device_put(batch, batch_sh), jax.random.key(0), frozen)
    after = jax.device_get(state["params"])
    lr = float(cfg.optimizer.learning_rate)
    grads = jax.tree.map(lambda b, a: (np.asarray(b, np.float64) - a) / lr, before, after)
    return StepResult({k: float(v) for k, v in jax.device_get(metrics).items()}, grads, before)


def assert_trees_close(got, want, rel=1e-4):
    """Equal to float tolerance, measured against each tensor's own scale: summation order
    differs across meshes and micro-batches, so entries near zero differ by a few ulps of
    the largest."""

    def close(path, a, b):
        b = np.asarray(b)
        atol = rel * float(np.max(np.abs(b)))
        np.testing.assert_allclose(a, b, rtol=rel, atol=atol, err_msg=jax.tree_util.keystr(path))

    jax.tree_util.tree_map_with_path(close, got, want)
