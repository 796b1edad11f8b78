"""Guarantees of the training side, each checked against a computation of its own: the
cross-entropy the train step reports (numpy), every remat policy's gradients (no remat),
gradient accumulation (one big batch) and sharding (one device) for the reward, DPO and
listwise steps, checkpoint retention, the logged learning rate (the schedule's formula), and
when the precomputed reference log-probs of a workdir are reused or recomputed."""

import functools
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest
from tiny_runs import (
    assert_trees_close,
    checkpoint_steps,
    copy_run,
    list_batch,
    pair_batch,
    read_metrics,
    read_params,
    run_step,
    scheduled_lr,
    sgd_config,
    tiny_config,
    token_batch,
    train_losses,
)

from align_jax import models, parallel
from align_jax.training import loop

SHARDED = {"data": 2, "fsdp": 2, "tensor": 2}
ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}


def mesh_of(shape):
    return parallel.make_mesh(shape, jax.devices()[: math.prod(shape.values())])


# ----------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize(
    "objective, z_loss, prompt_max", [("pretrain", 0.0, 0), ("pretrain", 1e-2, 0), ("sft", 1e-2, 6)]
)
def test_cross_entropy_the_step_reports_matches_numpy(objective, z_loss, prompt_max):
    cfg = sgd_config(objective)
    cfg.objective.z_loss = z_loss
    batch = token_batch(seed=3, prompt_max=prompt_max)
    step = run_step(cfg, mesh_of(ONE_DEVICE), batch)

    graphdef = models.abstract_params(cfg.model)[0]
    logits = np.asarray(
        models.apply_model(
            graphdef, step.params, batch["inputs"], batch["positions"], batch["segment_ids"]
        ),
        np.float64,
    )
    top = logits.max(axis=-1)
    log_z = top + np.log(np.exp(logits - top[..., None]).sum(axis=-1))
    target = np.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"].astype(np.float64)
    n = mask.sum()
    nll = ((log_z - target) * mask).sum() / n
    z = z_loss * (log_z**2 * mask).sum() / n
    accuracy = ((logits.argmax(-1) == batch["targets"]) * mask).sum() / n

    m = step.metrics
    assert m["loss"] == pytest.approx(nll + z, rel=1e-5)
    assert m["nll"] == pytest.approx(nll, rel=1e-5)
    assert m["token_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    if z_loss:
        assert m["z_loss"] == pytest.approx(z, rel=1e-5) and z > 1e-3 * nll
    else:
        assert "z_loss" not in m
    if prompt_max:  # prompt tokens carry no loss: the mask leaves some targets out of every row
        assert (mask[:, 0] == 0).all()


# ----------------------------------------------------------------------------- remat


@functools.cache
def remat_step(policy):
    cfg = sgd_config("pretrain", remat=policy)
    return run_step(cfg, mesh_of(SHARDED), token_batch(seed=4))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_every_remat_policy_gives_the_gradients_of_none(policy):
    got, want = remat_step(policy), remat_step("none")
    assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-6)
    assert got.metrics["grad_norm"] == pytest.approx(want.metrics["grad_norm"], rel=1e-5)
    assert_trees_close(got.grads, want.grads, rel=1e-5)


# ------------------------------------------------------------------ reward, DPO, listwise

# Valid rows 0-2, 4 and 7: with grad_accum_steps=4 (rows i::4 in micro-batch i) the
# micro-batches hold 2, 1, 1 and 1 examples, so a mean of per-micro-batch means (the bug)
# weights rows differently from the one big batch.
VALID = [1, 1, 1, 0, 1, 0, 0, 1]
ACCUM = 4


@functools.cache
def pref_step(objective, mesh_shape, accum=1):
    """One step of `objective` on a batch of 8 examples; DPO and listwise against a frozen
    reference (another initialisation, so rewards and the loss's gradient are not 0)."""
    if objective == "reward":
        cfg, batch, reference = sgd_config("reward", head="scalar"), pair_batch(VALID), None
    elif objective == "dpo":
        cfg, batch, reference = sgd_config("dpo"), pair_batch(VALID, seed=1), 1
    else:  # lists of 1 to 3 responses
        batch = list_batch(VALID, sizes=[3, 2, 3, 1, 2, 3, 3, 2], seed=2)
        cfg, reference = sgd_config("listwise"), 1
    return run_step(cfg, mesh_of(dict(mesh_shape)), batch, accum, reference_seed=reference)


def assert_same_step(got, want):
    assert got.metrics.keys() == want.metrics.keys()
    for k, v in want.metrics.items():
        assert got.metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert_trees_close(got.grads, want.grads)


@pytest.mark.parametrize("objective", ["reward", "dpo", "listwise"])
def test_gradient_accumulation_equals_one_big_batch(objective):
    one = pref_step(objective, tuple(SHARDED.items()))
    accumulated = pref_step(objective, tuple(SHARDED.items()), ACCUM)
    assert one.metrics["loss"] > 0 and one.metrics["grad_norm"] > 0
    assert_same_step(accumulated, one)
    counts = np.reshape(VALID, (-1, ACCUM)).sum(axis=0)  # valid examples per micro-batch
    assert len(set(counts.tolist())) > 1


@pytest.mark.parametrize("objective", ["reward", "listwise"])
def test_sharded_step_equals_one_device(objective):
    assert_same_step(
        pref_step(objective, tuple(SHARDED.items())),
        pref_step(objective, tuple(ONE_DEVICE.items())),
    )


# ----------------------------------------------------------------------------- what a run writes


@pytest.mark.slow
def test_only_the_last_keep_checkpoints_remain(base_run, tiny_data, tmp_path):
    workdir = copy_run(base_run, tmp_path / "run")  # checkpoints at 2 and 4
    cfg = tiny_config(
        tiny_data, total_steps=7, checkpoint_every=1, keep_checkpoints=2,
        **{"optimizer.schedule": "constant"},
    )  # fmt: skip
    loop.train(cfg, str(workdir))
    assert checkpoint_steps(workdir) == [6, 7]
    assert sorted(train_losses(workdir)) == list(range(1, 8))
    before, after = read_params(workdir, 6), read_params(workdir, 7)
    assert jax.tree.structure(before) == jax.tree.structure(after)


@pytest.mark.slow
def test_logged_learning_rate_follows_the_schedule_across_a_resume(base_run, tiny_data, tmp_path):
    # Resumed at step 4 with a linear schedule: steps 5-6 warm up, 7-10 decay.
    workdir = copy_run(base_run, tmp_path / "run")
    opt = dict(lr=2e-3, warmup=6, total=10, end_factor=0.25, kind="linear")
    cfg = tiny_config(
        tiny_data, total_steps=10,
        **{"optimizer.schedule": "linear", "optimizer.learning_rate": 2e-3,
           "optimizer.warmup_steps": 6, "optimizer.end_lr_factor": 0.25},
    )  # fmt: skip
    loop.train(cfg, str(workdir))
    logged = {r["step"]: r["learning_rate"] for r in read_metrics(workdir) if r["step"] > 4}
    assert sorted(logged) == list(range(5, 11))
    for step, value in logged.items():
        assert value == pytest.approx(scheduled_lr(step - 1, **opt), rel=1e-6), step
    assert logged[5] < logged[6] < logged[7] > logged[10]  # up to the peak, then down


# ----------------------------------------------------------------------------- reference cache

BETA = 0.1


def dpo_config(tiny_data, **overrides):
    """One DPO step of the tiny model from `base_run` against precomputed reference
    log-probs of the tiny preference pairs (train split only)."""
    return tiny_config(
        tiny_data, "dpo", total_steps=1, checkpoint_every=1,
        **{"objective.beta": BETA, "objective.precompute_ref_logps": True,
           "optimizer.warmup_steps": 0, "data.train_files": str(tiny_data / "pairs_train.jsonl"),
           "data.eval_files": "", **overrides},
    )  # fmt: skip


def cache_files(workdir):
    return os.path.join(workdir, "ref_logps_train.npy"), os.path.join(
        workdir, "ref_logps_train.npy.json"
    )


@pytest.fixture(scope="module")
def precomputed(base_run, tiny_data, tmp_path_factory):
    """(workdir, its reference table) of a DPO run whose reference is its init_from."""
    workdir = tmp_path_factory.mktemp("precomputed") / "run"
    loop.train(dpo_config(tiny_data, init_from=str(base_run)), str(workdir))
    return workdir, np.load(cache_files(workdir)[0])


def with_stale_cache(precomputed, workdir):
    """A fresh workdir holding `precomputed`'s cache files, the table's chosen log-probs
    moved by +3 (so whether the step used it shows in the loss); returns that table."""
    os.makedirs(workdir)
    npy, key = cache_files(precomputed[0])
    shutil.copy(key, cache_files(workdir)[1])
    table = precomputed[1] + np.array([3.0, 0.0], np.float32)
    np.save(cache_files(workdir)[0], table)
    return table


@pytest.mark.slow
def test_precomputed_reference_of_the_policy_ties_every_pair(precomputed, tiny_data):
    workdir, table = precomputed
    # Policy == reference at step 1: every implicit reward is 0, the loss log 2.
    assert read_metrics(workdir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    with open(tiny_data / "pairs_train.jsonl") as f:
        n = sum(1 for _ in f)
    assert table.shape == (n, 2) and (table < 0).all()


@pytest.mark.slow
def test_same_reference_and_data_reuse_the_cached_log_probs(
    precomputed, base_run, tiny_data, tmp_path, caplog
):
    workdir = tmp_path / "run"
    stale = with_stale_cache(precomputed, workdir)
    with caplog.at_level("INFO", logger="align_jax"):
        loop.train(dpo_config(tiny_data, init_from=str(base_run)), str(workdir))
    assert "reference log-probs (train) from" in caplog.text
    np.testing.assert_array_equal(np.load(cache_files(workdir)[0]), stale)
    # The reference's chosen log-probs 3 higher: every implicit reward margin is -3 beta.
    loss = read_metrics(workdir)[0]["loss"]
    assert loss == pytest.approx(math.log1p(math.exp(3 * BETA)), abs=1e-4)


@pytest.mark.slow
def test_another_reference_recomputes_the_cached_log_probs(
    precomputed, base_run, tiny_data, tmp_path
):
    other = base_run / "checkpoints" / "2"  # the same run two steps earlier: another model
    workdir = tmp_path / "run"
    stale = with_stale_cache(precomputed, workdir)
    cfg = dpo_config(tiny_data, init_from=str(base_run), **{"objective.reference_from": str(other)})
    loop.train(cfg, str(workdir))
    table = np.load(cache_files(workdir)[0])
    assert table.shape == stale.shape and not np.allclose(table, stale)
    with open(cache_files(workdir)[1]) as f:
        assert json.load(f)["reference"] == os.path.abspath(other)
    # The same step with that reference run inside it (nothing precomputed) agrees.
    inline = tmp_path / "inline"
    cfg = dpo_config(
        tiny_data, init_from=str(base_run),
        **{"objective.reference_from": str(other), "objective.precompute_ref_logps": False},
    )  # fmt: skip
    loop.train(cfg, str(inline))
    got, want = read_metrics(workdir)[0], read_metrics(inline)[0]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["loss"] != pytest.approx(math.log(2), abs=1e-3)  # really another model
    assert got["reward_margin"] == pytest.approx(want["reward_margin"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_other_data_recompute_the_cached_log_probs(precomputed, base_run, tiny_data, tmp_path):
    subset = tmp_path / "pairs_subset.jsonl"
    with open(tiny_data / "pairs_train.jsonl") as f:
        subset.write_text("".join(f.readlines()[:40]))
    workdir = tmp_path / "run"
    with_stale_cache(precomputed, workdir)
    cfg = dpo_config(tiny_data, init_from=str(base_run), **{"data.train_files": str(subset)})
    loop.train(cfg, str(workdir))
    # The same reference on the first 40 records: the first 40 rows of the full table.
    np.testing.assert_allclose(np.load(cache_files(workdir)[0]), precomputed[1][:40], rtol=1e-5)
    assert read_metrics(workdir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
