"""Ahead-of-time plans of a stage's programs: per-chip memory and model FLOPs from the
config alone, compiled for a mesh that need not exist here.

    topology = parse_topology("v5p-64")          # 32 chips, 95 GiB of HBM each
    mesh = parallel.make_mesh(config.mesh, tpu_devices(topology))   # needs libtpu
    plan = plan_stage(config, mesh)              # compiles every program of the stage
    plan.programs[0].peak_bytes, plan.fits(topology.hbm_bytes)

Nothing is loaded: parameters, optimizer state, frozen models and batches are
`jax.ShapeDtypeStruct`s with the shardings a run would give them, and each program is
lowered and compiled exactly as the loop would build it, for the mesh's devices. With
libtpu installed (the `tpu` extra) those devices can be the chips of a TPU topology
(`jax.experimental.topologies`), with no TPU attached: XLA's TPU compiler lays out the
program and reports its memory. Otherwise the mesh is this machine's (CPU) devices.

Programs. An offline stage has one, `train_step`. An online stage (GRPO, PPO, online
DPO) has three: `sampler` (generation of `data.batch_size` prompts × `num_generations` at
`max_prompt_len` + `max_new_tokens` slots), `prepare` (the rollout's log-probs, the
reference's, values) and `update` (all of a step's optimizer updates).

Memory, per chip (XLA's compiled memory analysis): arguments, outputs, what outputs reuse
of the donated arguments (aliases), temporaries and code; the program's own total is
arguments + outputs - aliases + temporaries + code. The train state and frozen models stay
in memory between programs, so a program's `peak_bytes` adds the resident bytes it does
not take as arguments (the optimizer state while sampling, for instance). A reward model
an online stage scores with is resident too; its run is not read, so it is counted as the
policy's architecture with a scalar head.

FLOPs. XLA's cost analysis counts a `scan`'s body once, and the layers are scanned, so
model FLOPs are analytic: `models.train_flops_per_token` (forward + backward) per trained
token, a third of it per token of a forward-only pass (frozen models, `prepare`, sampling).
The cost analysis is reported beside them as a cross-check only.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import numpy as np

from align_jax import models, objectives, parallel
from align_jax.checkpoint import abstract_like
from align_jax.rollout import Sampler, SamplingParams
from align_jax.training import init as init_lib
from align_jax.training import lora as lora_training
from align_jax.training import online
from align_jax.training import sources as sources_lib
from align_jax.training import step as step_lib
from align_jax.training.rl_step import RLStep

GiB = 2**30


# --- TPU topologies ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Generation:
    hbm_bytes: int  # per chip
    cores_per_chip: int  # TensorCores per chip in the slice's name (v5p-64 is 32 chips)
    dims: int  # torus dimensions


GENERATIONS = {
    "v4": Generation(32 * GiB, 2, 3),
    "v5p": Generation(95 * GiB, 2, 3),
    "v5e": Generation(16 * GiB, 1, 2),
    "v6e": Generation(32 * GiB, 1, 2),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    generation: str
    shape: tuple[int, ...]  # chips along each torus axis

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def hbm_bytes(self) -> int:
        return GENERATIONS[self.generation].hbm_bytes

    @property
    def name(self) -> str:
        """As `jax.experimental.topologies` names it: `v5p:2x4x4`."""
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def slice_name(self) -> str:
        """As Cloud TPU names the slice: `v5p-64` (v5e as `v5litepod-16`)."""
        gen = GENERATIONS[self.generation]
        prefix = "v5litepod" if self.generation == "v5e" else self.generation
        return f"{prefix}-{self.chips * gen.cores_per_chip}"

    @property
    def chips_per_host(self) -> tuple[int, int, int]:
        """Hosts of 2 × 2 chips, or one host for a smaller slice (v5e-8: 2 × 4)."""
        padded = (*self.shape, 1, 1)[:3]
        if self.chips <= 8 and self.generation in ("v5e", "v6e"):
            return padded
        return (min(2, padded[0]), min(2, padded[1]), 1)


def parse_topology(text: str) -> Topology:
    """`v5p-64` (Cloud TPU's slice name: TensorCores for v4 / v5p, chips for v5e / v6e,
    also spelled `v5litepod-16`) or an explicit torus, `v5p:2x4x4`."""
    expected = (
        f"--topology={text!r}; expected a slice name such as v5p-64, v4-32, v5e-16 or v6e-8, "
        f"or a torus such as v5p:2x4x4 (generations: {', '.join(GENERATIONS)})"
    )
    sep = ":" if ":" in text else "-"
    generation, _, size = text.partition(sep)
    generation = ALIASES.get(generation, generation)
    if generation not in GENERATIONS or not size:
        raise ValueError(expected)
    gen = GENERATIONS[generation]
    try:
        if sep == ":":
            shape = tuple(int(n) for n in size.split("x"))
            if len(shape) != gen.dims or min(shape) < 1:
                raise ValueError(expected)
            return Topology(generation, shape)
        chips, rest = divmod(int(size), gen.cores_per_chip)
    except ValueError:
        raise ValueError(expected) from None
    k = int(math.log2(chips)) if chips > 0 else -1
    if rest or k < 0 or 2**k != chips or (gen.dims == 3 and chips < 4):
        raise ValueError(expected)
    # Cloud TPU's slice shapes: as even as powers of two allow, the larger axes last
    # (v5p-32: 2x2x4, v5p-64: 2x4x4; v5e-32: 4x8); v4-8 / v5p-8 is 2x2x1.
    if gen.dims == 3 and chips == 4:
        return Topology(generation, (2, 2, 1))
    base, extra = divmod(k, gen.dims)
    shape = tuple(2 ** (base + (i >= gen.dims - extra)) for i in range(gen.dims))
    return Topology(generation, shape)


def tpu_devices(topology: Topology) -> list:
    """The chips of `topology` as compile-only devices (needs libtpu, no TPU)."""
    from jax.experimental import topologies

    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topology.name,
        chip_config_name="default",
        chips_per_host_bounds=topology.chips_per_host,
        num_slices=1,
    )
    return list(desc.devices)


# --- plans --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProgramPlan:
    name: str
    argument_bytes: int  # per chip, as XLA's memory analysis reports them
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    resident_bytes: int  # state and frozen models that stay in memory, not arguments here
    model_flops: float  # one run of the program, all chips (analytic)
    compiled_flops: float | None  # XLA's cost analysis, all chips (scans counted once)
    compile_seconds: float
    # The TPU compiler refused the program for want of HBM: temp_bytes is what it said the
    # temporaries need, the other sizes are unknown (0).
    out_of_memory: bool = False
    # Pallas TPU kernels in the compiled program (config.model.attention=splash: its forward
    # and two backward kernels per distinct mask); 0 for the XLA attention or a CPU plan.
    tpu_kernels: int = 0

    @property
    def total_bytes(self) -> int:
        return (
            self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes
        )  # fmt: skip

    @property
    def peak_bytes(self) -> int:
        return self.total_bytes + self.resident_bytes


@dataclasses.dataclass(frozen=True)
class StagePlan:
    programs: list[ProgramPlan]
    devices: int
    platform: str
    state_bytes: int  # per chip: trained parameters and optimizer state
    frozen_bytes: int  # per chip: reference, LoRA base, reward model

    @property
    def peak_bytes(self) -> int:
        return max(p.peak_bytes for p in self.programs)

    @property
    def model_flops(self) -> float:
        return sum(p.model_flops for p in self.programs)

    def fits(self, hbm_bytes: int) -> bool:
        return self.peak_bytes <= hbm_bytes and not any(p.out_of_memory for p in self.programs)


def bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of sharded `ShapeDtypeStruct`s (the most loaded
    device: shards are equal under named shardings)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total


def plan_stage(config, mesh) -> StagePlan:
    """Compiles every program of `config`'s stage for `mesh` (see the module docstring)."""
    rules = tuple(tuple(r) for r in config.sharding.rules)
    graphdef, shapes, axes = models.abstract_params(config.model)
    shardings = models.param_shardings(shapes, axes, mesh, rules)
    objective = objectives.build(config, graphdef)
    lora = models.lora_settings(config.model) is not None
    full_policy = abstract_like(shapes, shardings)
    base_shapes = base_shardings = None
    if lora:
        shapes, base_shapes = lora_training.split(shapes)
        shardings, base_shardings = lora_training.split(shardings)
        objective = lora_training.wrap_objective(objective, shapes)
    policy = abstract_like(shapes, shardings)
    t_shapes, t_shardings, tx, schedule = init_lib.trained_models(
        config, objective, shapes, shardings, mesh, rules, lora=lora
    )
    objective_state = objective.initial_state() if objective.initial_state else None
    state_sh = step_lib.state_shardings(tx, t_shapes, t_shardings, mesh, objective_state)
    state = abstract_like(step_lib.abstract_state(tx, t_shapes, objective_state), state_sh)
    frozen = _abstract_frozen(config, objective, policy, base_shapes, base_shardings)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
    batch = global_batch_shapes(config, objective, mesh, rules)
    batch_sharding = jax.tree.map(lambda x: x.sharding, batch)
    key = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh))

    state_bytes, frozen_bytes = bytes_per_device(state), bytes_per_device(frozen)
    frozen_bytes += _reward_model_bytes(config, objective, mesh, rules)
    resident = state_bytes + frozen_bytes
    train_flops = models.train_flops_per_token(config.model, _width(config, objective))
    programs = []
    with parallel.sharding_context(mesh, rules):
        if not objective.online:
            fn = step_lib.jit_train_step(
                step_lib.make_train_step(
                    objective, tx, schedule, config.optimizer.grad_accum_steps
                ),
                state_sh, batch_sharding, mesh, frozen_shardings,
            )  # fmt: skip
            tokens = objective.tokens_per_batch(batch)
            flops = train_flops * tokens * (1 + len(frozen_models(frozen)) / 3)
            lowered = fn.lower(state, batch, rng, frozen)
            programs.append(_compile("train_step", lowered, 0, flops, mesh.size))
        else:
            programs += _online_programs(
                config, objective, graphdef, tx, schedule, state, state_sh, batch, rng,
                frozen, frozen_shardings, mesh, rules, resident, train_flops, full_policy,
            )  # fmt: skip
    platform = mesh.devices.flat[0].platform
    return StagePlan(programs, mesh.size, platform, state_bytes, frozen_bytes)


def frozen_models(frozen) -> list[str]:
    """The frozen models a step reads (a LoRA run's base counts as one)."""
    return [name for name, value in (frozen or {}).items() if value is not None]


def _online_programs(config, objective, graphdef, tx, schedule, state, state_sh, batch, rng,
                     frozen, frozen_shardings, mesh, rules, resident, train_flops,
                     full_policy):  # fmt: skip
    """The sampler, prepare and update programs of an online objective."""
    rl = RLStep(
        objective, tx, schedule, config.optimizer.grad_accum_steps, state_sh,
        jax.tree.map(lambda x: x.sharding, batch), mesh, rules, frozen_shardings,
    )  # fmt: skip
    lowered = rl.lower(state, batch, rng, frozen)
    rows, width = batch["tokens"].shape
    tokens = rows * width
    # The sampler runs the policy: a LoRA run's merged model is a full-size copy.
    lora = bool(frozen) and "base" in frozen
    if lora:
        sample_params = full_policy
    else:
        sample_params = state["params"]["policy"] if objective.value_model else state["params"]
    forward = train_flops / 3
    state_bytes = bytes_per_device(state)
    opt_bytes = state_bytes - bytes_per_device(state["params"])
    # The update's tokens: the prepared batch's rows of token ids (online DPO trains on
    # pairs of rows).
    prepared = lowered["prepared"]
    trained = sum(
        v.size
        for k, v in prepared.items()
        if (k == "tokens" or k.endswith("_tokens")) and len(v.shape) == 2
    )
    passes = objective.updates_per_step // objective.num_minibatches
    update_flops = train_flops * trained * passes
    if objective.value_model is not None:
        value_flops = models.train_flops_per_token(objective.value_model.model, width)
        update_flops += value_flops * trained * passes
    prepare_flops = forward * tokens * objective.prepare_forwards
    programs = [
        _compile("prepare", lowered["prepare"], opt_bytes, prepare_flops, mesh.size),
        _compile("update", lowered["update"], 0, update_flops, mesh.size),
    ]
    if sample_params is not None:
        o, r = config.objective, config.rollout
        sp = SamplingParams(
            max_new_tokens=int(r.max_new_tokens), temperature=float(r.temperature),
            top_k=int(r.top_k), top_p=float(r.top_p), n=int(o.num_generations),
        )  # fmt: skip
        sampler = Sampler(graphdef, mesh, rules, eos_id=1, pad_id=0)
        prompt_len = width - int(r.max_new_tokens)
        low = sampler.lower(sample_params, rows, prompt_len, sp)
        not_args = resident - bytes_per_device(sample_params) * (not lora)
        programs.insert(0, _compile("sampler", low, not_args, forward * tokens, mesh.size))
    return programs


def _compile(name, lowered, resident_bytes, model_flops, devices: int) -> ProgramPlan:
    """Compiles `lowered` and reads its memory and cost analyses (per device)."""
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program that cannot fit: that is the plan's answer.
        needed = oom_temp_bytes(str(e))
        if needed is None:
            raise
        seconds = time.perf_counter() - t0
        return ProgramPlan(name, 0, 0, 0, needed, 0, int(resident_bytes), float(model_flops),
                           None, seconds, out_of_memory=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = (cost or {}).get("flops")
    kernels = compiled.as_text().count('custom_call_target="tpu_custom_call"')
    return ProgramPlan(
        name=name,
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        resident_bytes=int(resident_bytes),
        model_flops=float(model_flops),
        compiled_flops=None if flops is None else float(flops) * devices,
        compile_seconds=seconds,
        tpu_kernels=kernels,
    )


_SIZE = r"([0-9.]+)\s*([KMGT]?)i?B?"


def oom_temp_bytes(message: str) -> int | None:
    """The memory XLA's TPU compiler says a program needs when it runs out of HBM, in bytes
    (`... required for HLO temporaries (57.90G) exceeds available HBM (15.75G)`, or `Used
    20.5G of 15.75G hbm`); None when `message` is not such an error."""
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
        return None
    match = re.search(r"temporaries \(" + _SIZE + r"\)", message) or re.search(
        r"Used " + _SIZE + r" of", message
    )
    if match is None:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _abstract_frozen(config, objective, policy, base_shapes, base_shardings):
    """The step's `frozen` argument as the loop would pass it, abstract."""
    precomputed = bool(config.objective.get("precompute_ref_logps", False))
    reference = policy if objective.needs_reference and not precomputed else None
    if base_shapes is not None:
        base = abstract_like(base_shapes, base_shardings)
        return {"base": base, "reference": None}
    return {"reference": reference} if reference is not None else None


def _reward_model_bytes(config, objective, mesh, rules) -> int:
    """Per device, a reward model an online stage scores with (`config.rewards.functions`
    lists `reward_model`): its run is not read here, so it is taken to be the policy's
    architecture with a scalar head, as a reward model trained from the SFT model is."""
    if not objective.online:
        return 0
    listed = [f.strip() for f in str(config.rewards.functions).split(",")]
    if "reward_model" not in listed:
        return 0
    model = config.model.copy_and_resolve_references()
    with model.unlocked():
        model.head = "scalar"
        if "lora" in model:
            model.lora.rank = 0
    _, shapes, axes = models.abstract_params(model)
    shardings = models.param_shardings(shapes, axes, mesh, rules)
    return bytes_per_device(abstract_like(shapes, shardings))


def global_batch_shapes(config, objective, mesh, rules) -> dict:
    """The global batch (all processes' rows) with its shardings."""
    if objective.online:
        shapes = online.rollout_shapes(config, 1)
    else:
        data = sources_lib.DATA_PIPELINES[objective.batch_kind]
        kwargs = {}
        if config.objective.get("precompute_ref_logps", False):
            kwargs["with_ref_table"] = True
        if objective.batch_kind == "lists":
            kwargs["scored"] = True
        shapes = data.batch_shapes(config.data, 1, **kwargs)
    return abstract_like(shapes, step_lib.batch_shardings(shapes, mesh, rules))


def _width(config, objective) -> int:
    """The token rows' length: attention's share of the FLOPs grows with it."""
    if objective.online:
        return online.rollout_shapes(config, 1)["tokens"].shape[1]
    return int(config.data.seq_len)
