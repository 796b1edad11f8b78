"""LoRA training: a train step updates adapters only and leaves the base bit-identical; the
reference is the base itself; sharded gradients equal one device's; a tiny LoRA DPO run from
an SFT checkpoint checkpoints adapters only, resumes exactly, and `load_run` merges it."""

import json
import math
import os
import sys

import jax
import numpy as np
import pytest

from align_jax import checkpoint as ckpt
from align_jax import loading, objectives, parallel
from align_jax.config import DEFAULT_RULES, model_config
from align_jax.models import abstract_params, apply_model, init_params, lora, param_shardings
from align_jax.training import loop
from align_jax.training import lora as lora_training
from align_jax.training import step as step_lib
from align_jax.training.optimizer import make_optimizer
from align_jax.tree import flatten

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "objectives"))
from test_dpo_objective import pair_batch  # noqa: E402
from tiny_runs import stage_config  # noqa: E402

SMALL = dict(vocab_size=64, d_model=32, head_dim=8, mlp_dim=64)
LORA = dict(rank=4, alpha=8.0, targets="q,k,v,o,gate,up,down")


def dpo_lora_config():
    cfg = objectives.config_for("dpo")
    cfg.objective.update(loss_type="sigmoid", beta=0.5)
    cfg.model = model_config("tiny", **SMALL, lora=LORA)
    cfg.optimizer.update(learning_rate=1e-2, warmup_steps=0, weight_decay=0.0)
    return cfg


def lora_setup(cfg, mesh, b_seed=None):
    """(objective, trainable shapes and shardings, trainable params, frozen, base shardings)."""
    graphdef, shapes, axes = abstract_params(cfg.model)
    (t_shapes, _), (t_sh, b_sh) = (
        lora_training.split(t) for t in (shapes, param_shardings(shapes, axes, mesh, DEFAULT_RULES))
    )
    _, base, _ = init_params(model_config("tiny", **SMALL), mesh, DEFAULT_RULES, 0)
    trainable = lora_training.init_trainable(cfg, t_shapes, t_sh)
    if b_seed is not None:  # nonzero B, so A's gradient is not zero either
        trainable = jax.tree_util.tree_map_with_path(
            lambda p, x: (
                0.1 * jax.random.normal(jax.random.key(b_seed), x.shape)
                if p[-1].key.endswith("_lora_b")
                else x
            ),
            trainable,
        )
        trainable = jax.device_put(trainable, t_sh)
    objective = lora_training.wrap_objective(objectives.build(cfg, graphdef), t_shapes)
    return objective, t_shapes, t_sh, trainable, {"base": base, "reference": None}, b_sh


def test_a_new_head_trains_with_the_adapters():
    cfg = model_config("tiny", **SMALL, head="scalar", lora=LORA)
    trainable, base = lora_training.split(abstract_params(cfg)[1])
    assert set(trainable) == {"layers", "score_head"} and "score_head" not in base
    assert set(trainable["layers"]) == {"attn", "mlp"} and "attn_norm" in base["layers"]


def test_lora_step_updates_adapters_only(devices):
    cfg = dpo_lora_config()
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices)
    objective, t_shapes, t_sh, trainable, frozen, b_sh = lora_setup(cfg, mesh)
    tx, schedule = make_optimizer(cfg.optimizer, 10)
    shardings = step_lib.state_shardings(tx, t_shapes, t_sh, mesh)
    state = step_lib.init_state(tx, trainable, shardings)
    before = jax.device_get((frozen["base"], trainable))
    batch = pair_batch()
    batch_sh = step_lib.batch_shardings(batch, mesh, DEFAULT_RULES)
    with parallel.sharding_context(mesh, DEFAULT_RULES):
        train_step = step_lib.jit_train_step(
            step_lib.make_train_step(objective, tx, schedule), shardings, batch_sh, mesh,
            {"base": b_sh, "reference": None},
        )  # fmt: skip
        state, metrics = train_step(
            state, jax.device_put(batch, batch_sh), jax.random.key(0), frozen
        )
    # B = 0: the policy is the base, which is the reference: every pair's loss is log 2.
    assert float(metrics["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(metrics["chosen_reward"]) == 0.0 and float(metrics["kl_ref"]) == 0.0
    params = jax.device_get(state["params"])
    names = {path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert names and all(lora.is_adapter(n) for n in names)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen["base"]), before[0])
    for path, new in jax.tree_util.tree_leaves_with_path(params):
        old = before[1]["layers"][path[1].key][path[2].key]
        if path[-1].key.endswith("_lora_b"):  # B learns from the first step
            assert np.abs(new).max() > 0, path
        else:  # dL/dA = x^T (dL/dy) B^T is exactly 0 while B = 0 (and no weight decay)
            np.testing.assert_array_equal(new, old)


def test_sharded_lora_gradients_equal_single_device(devices):
    cfg = dpo_lora_config()
    batch = pair_batch(seed=1)
    grads = []
    for shape in (
        {"data": 1, "fsdp": 1, "tensor": 1},
        {"data": 2, "fsdp": 2, "tensor": 2},
        {"data": 1, "fsdp": 8, "tensor": 1},
    ):
        mesh = parallel.make_mesh(shape, devices[: np.prod(list(shape.values()))])
        objective, _, _, trainable, frozen, _ = lora_setup(cfg, mesh, b_seed=3)
        with parallel.sharding_context(mesh, DEFAULT_RULES):
            g = jax.jit(jax.grad(lambda t, f, b, o=objective: o.loss_fn(t, f, b, None)[0]))(
                trainable, frozen, batch
            )
        grads.append(jax.device_get(g))
    assert float(np.abs(grads[0]["layers"]["attn"]["q_lora_a"]).max()) > 0
    for other in grads[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max()),
            other,
            grads[0],
        )


def test_separate_reference_equals_merged_policy_against_that_reference():
    """reference_from: with adapters trained (B != 0) and another model as reference, the
    wrapped loss is the plain DPO loss of the merged policy against that plain model."""
    cfg = dpo_lora_config()
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    objective, _, _, trainable, frozen, _ = lora_setup(cfg, mesh, b_seed=5)
    plain_cfg = objectives.config_for("dpo")
    plain_cfg.objective.update(cfg.objective)
    plain_cfg.model = model_config("tiny", **SMALL)
    plain_graphdef, other, _ = init_params(plain_cfg.model, mesh, DEFAULT_RULES, 9)
    batch = pair_batch(seed=2)
    got = objective.loss_fn(trainable, {**frozen, "reference": other}, batch, None)[0]
    merged = lora.merge_lora(lora.join(frozen["base"], trainable), cfg.model)
    want = objectives.build(plain_cfg, plain_graphdef).loss_fn(
        merged, {"reference": other}, batch, None
    )[0]
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def config(name, data_dir, **kw):
    return stage_config(name, data_dir, log_every=5, **kw)


@pytest.mark.slow
def test_lora_dpo_run_from_sft(sft_run, tmp_path):
    data, sft_dir = sft_run.data, sft_run.sft
    # A constant schedule, so a run stopped via total_steps=10 trains the 20-step run's first 10.
    fixed = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "optimizer.schedule": "constant"}
    cfg = lambda n, **kw: config(  # noqa: E731
        "dpo/lora_tiny.py", data, total_steps=n, eval_every=20, checkpoint_every=10,
        init_from=str(sft_dir), **fixed, **kw,
    )  # fmt: skip
    full = tmp_path / "full"
    loop.train(cfg(20), str(full))
    first, evals = records(full)[0], [r for r in records(full) if "eval_loss" in r]
    # Step 1: zero adapters, so policy == reference == the SFT model: loss log 2, no reward,
    # to rounding (the adapted forward and the plain one are different XLA programs, so
    # their log-probs may differ in the last bit).
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["chosen_reward"] == pytest.approx(0.0, abs=1e-6)
    assert first["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    assert evals[-1]["eval_loss"] < 0.5, evals[-1]  # log 2 = 0.69 before training
    assert evals[-1]["eval_reward_accuracy"] > 0.8 and evals[-1]["eval_kl_ref"] > 0

    # The checkpoint holds the adapters and nothing else.
    stored = flatten(dict(ckpt.stored_tree(ckpt.resolve_state_dir(str(full)))["params"]))
    assert stored and all(lora.is_adapter(k[-1]) for k in stored)

    # load_run: the base from the run's init_from with the adapters merged in, a plain model.
    run_cfg, graphdef, merged, run_mesh = loading.load_run(str(full))
    assert run_cfg.model.lora.rank == 0
    _, _, sft_params, _ = loading.load_run(str(sft_dir), mesh=run_mesh)
    assert jax.tree.structure(merged) == jax.tree.structure(sft_params)
    np.testing.assert_array_equal(merged["embedding"], sft_params["embedding"])
    assert not np.allclose(
        merged["layers"]["mlp"]["down_kernel"], sft_params["layers"]["mlp"]["down_kernel"]
    )
    lora_graphdef, shapes, axes = abstract_params(cfg(20).model)
    t_shapes, _ = lora_training.split(shapes)
    t_sh, _ = lora_training.split(param_shardings(shapes, axes, run_mesh, DEFAULT_RULES))
    adapters = loading.load_params(str(full), t_shapes, t_sh, merge_lora_runs=False)
    tokens = pair_batch(length=16)["chosen_tokens"]
    np.testing.assert_allclose(
        apply_model(graphdef, merged, tokens),
        apply_model(lora_graphdef, lora.join(sft_params, adapters), tokens),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip

    # Stopped at 10 and resumed (the base reloaded from init_from): the same run exactly.
    split = tmp_path / "split"
    loop.train(cfg(10), str(split))
    loop.train(cfg(20), str(split))
    losses = lambda w: {r["step"]: r["loss"] for r in records(w) if "eval_loss" not in r}  # noqa: E731
    assert losses(split) == losses(full)

    # Precomputed reference log-probs of the base give the same first step.
    pre = tmp_path / "pre"
    loop.train(cfg(2, **{"objective.precompute_ref_logps": True}), str(pre))
    assert records(pre)[0]["loss"] == pytest.approx(first["loss"], abs=1e-6)
    assert os.path.exists(pre / "ref_logps_train.npy")

    # A LoRA run hands off like any stage: init_from reads it as the merged model.
    plain_shapes, plain_axes = abstract_params(run_cfg.model)[1:]
    plain_sh = param_shardings(plain_shapes, plain_axes, run_mesh, DEFAULT_RULES)
    handed = loading.load_params(str(full), plain_shapes, plain_sh)
    for path, value in flatten(merged).items():
        np.testing.assert_array_equal(flatten(handed)[path], value, err_msg=str(path))
    assert loading.checkpoint_diff(str(full), plain_shapes) == ([], [])
    chain = tmp_path / "chain"
    loop.train(config("dpo/tiny.py", data, init_from=str(full), total_steps=1), str(chain))
    assert records(chain)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)

    # LoRA needs a base: it says so.
    no_base = cfg(2)
    no_base.init_from = ""
    with pytest.raises(ValueError, match="set config.init_from"):
        loop.train(no_base, str(tmp_path / "no_base"))
