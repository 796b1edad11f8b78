"""The memory planner (align_jax/training/plan.py, tools/plan.py): topology names, per-chip
bytes against sums of the arguments' shards, model FLOPs against the PaLM count written out
here, and the command line."""

import importlib.util
import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from tiny_runs import REPO, TINY_MODEL, VOCAB, tiny_config, xla_env

from align_jax import models, parallel
from align_jax.checkpoint import abstract_like
from align_jax.training import plan as plan_lib

GiB = 2**30


@pytest.mark.parametrize(
    "name, generation, shape, hbm_gib",
    [
        ("v5p-64", "v5p", (2, 4, 4), 95),
        ("v5p-8", "v5p", (2, 2, 1), 95),
        ("v5p-32", "v5p", (2, 2, 4), 95),
        ("v4-128", "v4", (4, 4, 4), 32),
        ("v5e-16", "v5e", (4, 4), 16),
        ("v5litepod-32", "v5e", (4, 8), 16),
        ("v6e-8", "v6e", (2, 4), 32),
        ("v5p:2x2x4", "v5p", (2, 2, 4), 95),
    ],
)
def test_topology_names(name, generation, shape, hbm_gib):
    t = plan_lib.parse_topology(name)
    assert (t.generation, t.shape, t.hbm_bytes) == (generation, shape, hbm_gib * GiB)
    assert t.chips == math.prod(shape)
    assert t.name == f"{generation}:{'x'.join(map(str, shape))}"
    # Cloud TPU's name of the slice (TPU_ACCELERATOR_TYPE) reads back as the same topology.
    assert plan_lib.parse_topology(t.slice_name) == t
    assert t.slice_name == {"v5p:2x2x4": "v5p-32", "v5e-16": "v5litepod-16"}.get(name, name)


@pytest.mark.parametrize("name", ["v5p-12", "v5p-2", "v7-8", "v5p:2x2", "v5e-", "tpu"])
def test_bad_topology_is_one_line_naming_the_flag(name):
    with pytest.raises(ValueError) as e:
        plan_lib.parse_topology(name)
    assert "\n" not in str(e.value) and f"--topology={name!r}" in str(e.value)


def test_a_program_the_tpu_compiler_cannot_fit_is_a_plan_that_does_not_fit():
    # libtpu 0.0.42.1's words for configs/sft/llama3_8b.py on v5e-16, and an older form.
    seen = (
        "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total "
        "memory required for HLO temporaries (57.90G) exceeds available HBM (15.75G)."
    )
    assert plan_lib.oom_temp_bytes(seen) == int(57.90 * GiB)
    older = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm."
    assert plan_lib.oom_temp_bytes(older) == int(20.5 * GiB)
    assert plan_lib.oom_temp_bytes("INVALID_ARGUMENT: something else (1.0G)") is None
    refused = plan_lib.ProgramPlan("train_step", 0, 0, 0, GiB, 0, GiB, 1.0, None, 1.0, True)
    small = plan_lib.ProgramPlan("prepare", GiB, 0, 0, 0, 0, 0, 1.0, None, 1.0)
    stage = plan_lib.StagePlan([small, refused], 16, "tpu", GiB, 0)
    assert stage.peak_bytes == 2 * GiB and not stage.fits(100 * GiB)
    assert plan_lib.StagePlan([small], 16, "tpu", GiB, 0).fits(100 * GiB)


def _mesh(data, fsdp, tensor, devices):
    return parallel.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, devices)


def _state_nbytes(params_count: int, opt_leaves: int) -> int:
    """fp32 parameters and AdamW's two moments, plus its scalar step counts (int32)."""
    return 3 * 4 * params_count + 4 * opt_leaves + 4  # + the train state's step


def test_tiny_pretraining_plan_against_independent_counts(tmp_path, devices):
    config = tiny_config(tmp_path)  # the data files are never read
    # Replicated (data parallel only): a chip holds the whole train state.
    plan = plan_lib.plan_stage(config, _mesh(8, 1, 1, devices))
    _, shapes, _ = models.abstract_params(config.model)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    replicated = plan.state_bytes
    scalars = replicated - 12 * n_params
    assert 0 < scalars < 64  # only optimizer counts and the step beside the tensors
    assert plan.frozen_bytes == 0 and plan.devices == 8 and plan.platform == "cpu"
    (step,) = plan.programs
    assert step.name == "train_step" and step.resident_bytes == 0
    # Arguments: the state, this chip's rows of the batch (5 fields of [16/8, 32] 4-byte
    # values) and the RNG key; the new state reuses the donated one.
    batch_bytes = 5 * (config.data.batch_size // 8) * config.data.seq_len * 4
    assert step.argument_bytes == pytest.approx(replicated + batch_bytes, abs=64)
    assert step.alias_bytes == pytest.approx(replicated, abs=64)
    assert step.peak_bytes == step.total_bytes > step.argument_bytes
    # Model FLOPs: 6 × the parameters less the embedding table (the untied LM head counts;
    # the norms' scales too, a rounding error) + 12 · layers · heads · head_dim · seq_len,
    # per token of the global batch.
    m, seq = TINY_MODEL, config.data.seq_len
    assert not config.model.tie_embeddings
    matmul = n_params - m["vocab_size"] * m["d_model"]
    per_token = 6 * matmul + 12 * m["n_layers"] * m["n_heads"] * m["head_dim"] * seq
    assert step.model_flops == pytest.approx(per_token * config.data.batch_size * seq, rel=1e-9)
    assert plan.fits(GiB) and not plan.fits(plan.peak_bytes - 1)

    # Fully sharded over 8 chips: each holds an eighth of every matrix, so the state per chip
    # shrinks to well under a quarter (the small vectors are replicated).
    sharded = plan_lib.plan_stage(config, _mesh(1, 8, 1, devices))
    assert sharded.state_bytes < replicated / 4
    assert sharded.state_bytes >= (replicated - scalars) / 8


def test_grpo_plan_has_the_sampler_prepare_and_update(tmp_path, devices):
    config = tiny_config(
        tmp_path, "grpo", **{"objective.beta": 0.04, "objective.num_iterations": 2}
    )
    config.data.update(max_prompt_len=16)
    config.rollout.max_new_tokens = 8
    plan = plan_lib.plan_stage(config, _mesh(2, 2, 2, devices))
    assert [p.name for p in plan.programs] == ["sampler", "prepare", "update"]
    sampler, prepare, update = plan.programs
    # The reference (a policy-shaped frozen model) stays resident through every program.
    params_bytes = plan_lib.bytes_per_device(
        abstract_like(*_policy(config, _mesh(2, 2, 2, devices)))
    )
    assert plan.frozen_bytes == params_bytes
    # The sampler takes the policy's parameters; the optimizer state and the reference wait.
    assert sampler.resident_bytes == plan.state_bytes + plan.frozen_bytes - params_bytes
    rows, width = config.data.batch_size * config.objective.num_generations, 16 + 8
    per_token = models.train_flops_per_token(config.model, width)
    # Prepare: old log-probs (two passes make the second off-policy) and the reference's.
    assert prepare.model_flops == pytest.approx(2 * per_token / 3 * rows * width)
    # Update: two passes over the batch, each a forward and a backward of every row.
    assert update.model_flops == pytest.approx(2 * per_token * rows * width)
    assert sampler.model_flops == pytest.approx(per_token / 3 * rows * width)


def _policy(config, mesh):
    _, shapes, axes = models.abstract_params(config.model)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    return shapes, models.param_shardings(shapes, axes, mesh, rules)


@pytest.mark.slow
def test_plan_command_line(tmp_path):
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "tools/plan.py", "--config=configs/pretrain/tiny.py",
           "--topology=v5e-4", "--cpu", f"--json={out}", "--config.mesh.fsdp=-1"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=xla_env(devices=1), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 simulated CPU devices standing in for v5e:2x2" in done.stdout
    assert "fits" in done.stdout and "train_step" in done.stdout
    plan = json.loads(out.read_text())
    assert plan["chips"] == 4 and plan["compiler"] == "cpu" and plan["fits"]
    assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    (step,) = plan["programs"]
    assert plan["peak_bytes"] == step["peak_bytes"] == step["total_bytes"]
    assert np.isclose(plan["model_flops"], step["model_flops"])

    bad = subprocess.run(
        [*cmd[:3], "--topology=v5p-12"], cwd=REPO, env=xla_env(devices=1),
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--topology='v5p-12'" in bad.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="needs libtpu (pip install -e '.[tpu]'): compiles for a TPU topology",
)
def test_splash_attention_compiles_into_pallas_tpu_kernels(tmp_path):
    """With libtpu, the planner compiles splash for TPU chips: its forward and two backward
    kernels once in the scanned layer, twice that when local and global layers alternate
    (a lax.cond between two masks); the XLA attention has none."""
    kernels = {}
    for name, extra in [
        ("xla", []),
        ("splash", ["--config.model.attention=splash"]),
        ("splash_local_global", ["--config.model.attention=splash",
                                 "--config.model.sliding_window=16",
                                 "--config.model.sliding_pattern=2"]),
    ]:  # fmt: skip
        out = tmp_path / f"{name}.json"
        cmd = [sys.executable, "tools/plan.py", "--config=configs/pretrain/tiny.py",
               "--topology=v5p-8", f"--json={out}", *extra]  # fmt: skip
        done = subprocess.run(cmd, cwd=REPO, env=xla_env(devices=1), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        plan = json.loads(out.read_text())
        assert plan["compiler"] == "tpu" and plan["fits"]
        kernels[name] = plan["programs"][0]["tpu_kernels"]
    assert kernels == {"xla": 0, "splash": 3, "splash_local_global": 6}


def test_prepare_micro_batches_cut_the_prepare_programs_temporaries(tmp_path, devices):
    """`rollout.prepare_micro_batches=k` keeps 1/k of the prepare pass's logits alive: the
    compiled program's temporaries fall by about that factor while its FLOPs stay (measured
    per chip: 153,264 bytes at k = 1, 53,720 at k = 4)."""
    plans = {}
    for k in (1, 4):
        config = tiny_config(tmp_path, "grpo", **{"objective.beta": 0.04,
                                                   "objective.num_generations": 4,
                                                   "rollout.prepare_micro_batches": k})  # fmt: skip
        config.data.update(batch_size=8, max_prompt_len=16)
        config.rollout.max_new_tokens = 8
        plans[k] = plan_lib.plan_stage(config, _mesh(8, 1, 1, devices)).programs[1]
    one, four = plans[1], plans[4]
    assert one.name == four.name == "prepare"
    assert four.model_flops == one.model_flops
    # 32 rows of 23 next tokens over 8 chips: one model's fp32 logits per chip
    logits = 4 * 32 // 8 * 23 * VOCAB
    assert one.temp_bytes > logits
    assert four.temp_bytes < 0.5 * one.temp_bytes, (one.temp_bytes, four.temp_bytes)
