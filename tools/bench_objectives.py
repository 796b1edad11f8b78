"""Benchmark of the train step of every objective on this machine: step time, tokens/s,
model GFLOP/s and MFU against the fp32 matmul peak measured in the same run.

Prints figures; asserts nothing about timings. In one process it measures

1. the peak of a jitted 2048 x 2048 @ 2048 x 2048 fp32 matmul, before and after the steps
   (tools/bench_train.py's `matmul_peak`; MFU is taken against the higher median);
2. for each model size (`--configs`: `tiny` and `llama25m`, tools/bench_train.py's shapes)
   and each objective (`--objectives`: pretrain, sft, reward, dpo, grpo, ppo), the stage's
   program built as the loop builds it: configs/<objective>/tiny.py for the objective's and
   optimizer's settings with the size's model swapped in (a scalar head for `reward`), the
   mesh, parameter and optimizer-state shardings, `init.trained_models` (PPO's policy and
   value model, one optimizer each), inside `parallel.sharding_context`:
   - offline (pretrain, sft, reward, dpo): `make_train_step` + `jit_train_step` with
     donation: forward, backward, clipping, AdamW. DPO's frozen reference is a second
     random-initialised model of the same shape, passed as the step's `frozen` argument;
   - online (grpo, ppo): `RLStep.lower` (as align_jax/training/plan.py builds them), then
     the `update` program is timed alone (row `update`: all of a rollout batch's optimizer
     updates, `updates_per_step` of them over `num_minibatches` minibatches), and the
     no-gradient `prepare` program as a row of its own. No sampling, no reward.
   Batches are synthetic, with the fields, dtypes and shapes of the planner's abstract batch
   (plan.py's `global_batch_shapes`: the data pipeline's `batch_shapes`, or
   `online.rollout_shapes`): packed LM rows (1-4 documents a row; SFT's loss on each
   document's second half), right-padded preference pairs, and rollout rows laid out by
   `rollout.rows.training_rows` (prompts in the first quarter of the width, completions of
   random length, random rewards). Four distinct batches are cycled.

Each row reports the median over `--steps` timed calls after `--warmup` untimed ones (the
programs are compiled ahead of time, so no call compiles; `compile s` is tracing, lowering
and compiling, an RL step's tracing of both programs counted in its update's), tokens/s,
model GFLOP/s, MFU = model GFLOP/s / matmul peak GFLOP/s, and the CPU other processes used
while it was timed.

Model FLOPs per call, analytic, counted as the memory planner (align_jax/training/plan.py)
counts them so that the two agree. With F(m, W) = `models.train_flops_per_token(m, W)`
= 6 x (count_params(m) without embeddings, the head's matmul included: the LM head's
vocab x d_model or the scalar head's d_model; the few norm weights count too) + 12 x layers
x heads x head_dim x W (attention scores and values, PaLM's count), a forward being F / 3,
and every slot of a row counted (padding included; a row of W slots counts W tokens):
- pretrain, sft: F(policy, seq) x rows x seq;
- reward: F(reward model, seq) x 2 pairs x seq, the scalar head instead of the LM head;
- dpo: F(policy, seq) x (1 + 1/3) x 2 pairs x seq: the policy's forward and backward plus
  the frozen reference's forward over both sides;
- grpo update: F(policy, W) x rows x W x passes (passes = updates_per_step /
  num_minibatches: every pass trains on every row once);
- ppo update: (F(policy, W) + F(value model, W)) x rows x W x passes: the value model is
  trained in the same updates (its scalar head instead of the LM head);
- prepare: F(policy, W) / 3 x rows x W x `Objective.prepare_forwards` (GRPO at beta = 0 with
  one update per rollout: 0, it runs no model; PPO: 3, the policy, the reference and the
  value model, the last counted as a policy forward, as the planner does).
Not counted: the embedding lookup, softmax and log-softmax, elementwise work, the optimizer.
tokens/s counts the tokens trained on (for prepare, run through) per second, once per pass.

    .venv/bin/python tools/bench_objectives.py                 # tiny + llama25m, all six
    .venv/bin/python tools/bench_objectives.py --configs tiny --steps 1 --warmup 0  # smoke
    .venv/bin/python tools/bench_objectives.py --configs llama25m --objectives dpo,ppo \\
        --json /tmp/bench.json

Output: a table, then one JSON line per row (prefix `RESULT `), and with `--json` the same
rows and the peak in one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import bench_train  # tools/ is on sys.path when a tool runs as a script
import numpy as np

from align_jax import cli  # imports no jax: XLA_FLAGS can still be set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = ("pretrain", "sft", "reward", "dpo", "grpo", "ppo")
CONFIGS = bench_train.CONFIGS
# (rows, width) per size: bench_train's token counts (2048 and 4096 a step), so every
# matmul has at least 2048 rows. Pairs take rows / 2 pairs, GRPO rows / G prompts.
DEFAULT_SHAPES = bench_train.DEFAULT_SHAPES
N_BATCHES = 4


def parse_args(argv=None):
    p = cli.ArgumentParser(
        prog="tools/bench_objectives.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {CONFIGS}")
    p.add_argument(
        "--objectives", default=",".join(OBJECTIVES), help=f"comma-separated, from {OBJECTIVES}"
    )
    p.add_argument("--steps", type=int, default=5, help="timed calls per program")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (none compiles)")
    p.add_argument(
        "--batch", type=int, default=0, help="rows of --seq tokens per step (0: per-size default)"
    )
    p.add_argument("--seq", type=int, default=0, help="row width in tokens (0: per-size default)")
    p.add_argument("--devices", type=int, default=1, help="CPU devices (>1: simulated)")
    p.add_argument("--remat", default="", help="none | full | dots | dots_no_batch")
    p.add_argument("--dtype", default="", help="compute dtype float32 | bfloat16")
    p.add_argument("--matmul_n", type=int, default=2048, help="side of the peak matmul")
    p.add_argument("--matmul_repeats", type=int, default=10, help="timed repeats of the matmul")
    p.add_argument("--json", default="", help="also write the rows and the peak to this file")
    p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before jax starts")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag, valid in (("configs", CONFIGS), ("objectives", OBJECTIVES)):
        names = [n.strip() for n in getattr(args, flag).split(",") if n.strip()]
        unknown = sorted(set(names) - set(valid))
        if unknown or not names:
            raise cli.UsageError(f"--{flag}: unknown {unknown}; choose from {valid}")
        setattr(args, flag, names)
    if args.steps < 1 or args.warmup < 0:
        raise cli.UsageError("--steps must be >= 1 and --warmup >= 0")
    return args


# --- configs -------------------------------------------------------------------------------


def make_config(objective: str, size: str, args):
    """configs/<objective>/tiny.py with `size`'s model (bench_train's) and the bench shape."""
    rows, width = DEFAULT_SHAPES[size]
    rows, width = args.batch or rows, args.seq or width
    model = bench_train.make_config(size, args).model  # its --remat and --dtype applied
    c = cli.load_config(os.path.join(ROOT, "configs", objective, "tiny.py"))
    with c.unlocked():
        c.model = model
        c.model.max_seq_len = max(int(c.model.max_seq_len), width)
        if objective == "reward":
            c.model.head = "scalar"
        c.total_steps = 10_000  # the schedule only
        c.seed = args.seed
        c.data.seq_len = width
        group = 2 if objective in ("reward", "dpo") else 1
        if objective in ("grpo", "ppo"):
            group = int(c.objective.num_generations)
            c.data.max_prompt_len = max(2, width // 4)
            c.rollout.max_new_tokens = width - c.data.max_prompt_len
        if rows % group or rows < group:
            raise cli.UsageError(
                f"--batch={rows}: {objective} takes rows in groups of {group} (pairs, or "
                "num_generations completions per prompt); use a multiple of it"
            )
        c.data.batch_size = rows // group
    return c


# --- synthetic batches ---------------------------------------------------------------------


def lm_batch(rng, rows: int, seq: int, vocab: int, *, sft: bool) -> dict:
    """Packed LM rows (bench_train's); SFT's loss only on each document's second half."""
    batch = bench_train.synthetic_batch(rng, rows, seq, vocab)
    if sft:
        seg, pos = batch["segment_ids"], batch["positions"]
        doc_len = np.stack([np.bincount(seg[r])[seg[r]] for r in range(rows)])
        batch["loss_mask"] *= (pos >= doc_len // 2).astype(np.float32)
    return batch


def pair_batch(rng, pairs: int, seq: int, vocab: int) -> dict:
    """Right-padded pair rows: prompt then completion, 1/2 to all of the slots real."""
    out = {}
    for side in ("chosen", "rejected"):
        tokens = np.zeros((pairs, seq), np.int32)
        mask = np.zeros((pairs, seq), np.float32)
        segment_ids = np.zeros((pairs, seq), np.int32)
        for r in range(pairs):
            n = int(rng.integers(seq // 2, seq + 1))
            p = int(rng.integers(1, n // 2 + 1))
            tokens[r, :n] = rng.integers(2, vocab, n)
            mask[r, p:n], segment_ids[r, :n] = 1.0, 1
        out.update({f"{side}_tokens": tokens, f"{side}_mask": mask})
        out[f"{side}_segment_ids"] = segment_ids
    out.update(margin=np.zeros(pairs, np.float32), label=np.ones(pairs, np.float32))
    out.update(valid=np.ones(pairs, np.float32), index=np.arange(pairs, dtype=np.int32))
    return out


def rollout_batch(rng, rows: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    """Rollout rows as `training_rows` lays out a sampler's output (random prompts of
    1..prompt_len tokens, completions of 1..new_tokens), random rewards and eos flags."""
    from align_jax.rollout.rows import training_rows

    prompts = [rng.integers(2, vocab, int(rng.integers(1, prompt_len + 1))) for _ in range(rows)]
    lengths = rng.integers(1, new_tokens + 1, rows)
    completion_mask = np.arange(new_tokens)[None, :] < lengths[:, None]
    batch = training_rows(
        prompts,
        rng.integers(2, vocab, (rows, new_tokens)),
        completion_mask,
        -rng.exponential(1.0, (rows, new_tokens)),
        width=prompt_len + new_tokens,
        pad_id=0,
    )
    batch["rewards"] = rng.normal(size=rows).astype(np.float32)
    batch["has_eos"] = (lengths < new_tokens).astype(np.int32)
    return batch


def synthetic_batches(config, objective, abstract: dict, rng) -> list[dict]:
    """`N_BATCHES` host batches with exactly the fields, shapes and dtypes of `abstract`."""
    vocab = int(config.model.vocab_size)
    rows = next(iter(abstract.values())).shape[0]
    kind = objective.batch_kind
    if kind in ("tokens", "sft"):
        make = lambda: lm_batch(rng, rows, config.data.seq_len, vocab, sft=kind == "sft")  # noqa: E731
    elif kind == "pairs":
        make = lambda: pair_batch(rng, rows, config.data.seq_len, vocab)  # noqa: E731
    else:
        prompt_len, new = config.data.max_prompt_len, config.rollout.max_new_tokens
        make = lambda: rollout_batch(rng, rows, prompt_len, new, vocab)  # noqa: E731
    batches = [make() for _ in range(N_BATCHES)]
    got = {k: (v.shape, str(v.dtype)) for k, v in batches[0].items()}
    want = {k: (tuple(v.shape), str(v.dtype)) for k, v in abstract.items()}
    if got != want:
        raise AssertionError(f"synthetic {kind} batch {got} != the planner's {want}")
    return batches


# --- the programs ---------------------------------------------------------------------------


def timed(call, steps: int, warmup: int) -> dict:
    """Median and spread of `call(i)` (which blocks until its results are ready) over
    `steps` calls after `warmup` untimed ones, and the CPU shares meanwhile."""
    for i in range(warmup):
        call(i)
    times = []
    with bench_train.CpuShare() as share:
        for i in range(warmup, warmup + steps):
            t0 = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - t0)
    return {
        "timed_s": sum(times),
        "step_s": statistics.median(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "own_cores": round(share.own, 2),
        "others_cores": round(share.others, 2),
        "steal_cores": round(share.steal, 2),
    }


def bench_objective(name: str, size: str, args) -> list[dict]:
    """The rows of one objective on one model size: its train step, or RL update + prepare."""
    import jax

    from align_jax import models, objectives, parallel
    from align_jax.training import init as init_lib
    from align_jax.training import plan
    from align_jax.training import step as step_lib

    config = make_config(name, size, args)
    # The loop's construction, in the loop's order (align_jax/training/loop.py::_train).
    mesh = parallel.make_mesh(config.mesh, jax.devices()[: args.devices])
    rules = tuple(tuple(r) for r in config.sharding.rules)
    graphdef, shapes, axes = models.abstract_params(config.model)
    policy_shardings = models.param_shardings(shapes, axes, mesh, rules)
    objective = objectives.build(config, graphdef)
    trained_shapes, trained_shardings, tx, schedule = init_lib.trained_models(
        config, objective, shapes, policy_shardings, mesh, rules, lora=False
    )
    objective_state = objective.initial_state() if objective.initial_state else None
    shardings = step_lib.state_shardings(tx, trained_shapes, trained_shardings, mesh,
                                         objective_state)  # fmt: skip
    abstract = plan.global_batch_shapes(config, objective, mesh, rules)  # the planner's batch
    batch_sharding = {k: v.sharding for k, v in abstract.items()}
    host = synthetic_batches(config, objective, abstract, np.random.default_rng(args.seed))
    frozen_shardings = {"reference": policy_shardings} if objective.needs_reference else None

    with parallel.sharding_context(mesh, rules):
        _, params, _ = models.init_params(config.model, mesh, rules, config.seed)
        if objective.value_model is not None:  # init.py's {"policy", "value"}, fresh
            value = models.init_params(objective.value_model.model, mesh, rules, config.seed + 1)
            params = {"policy": params, "value": value[1]}
        state = step_lib.init_state(tx, params, shardings, objective_state)
        n_params = sum(int(x.size) for x in jax.tree.leaves(state["params"]))
        frozen = None
        if objective.needs_reference:  # a random model of the policy's shape
            frozen = {
                "reference": models.init_params(config.model, mesh, rules, config.seed + 2)[1]
            }
        batches = [{k: jax.device_put(v, batch_sharding[k]) for k, v in b.items()} for b in host]
        programs = online_programs if objective.online else offline_program
        rows = programs(config, objective, tx, schedule, shardings, batch_sharding, mesh, rules,
                        frozen_shardings, state, frozen, batches, args)  # fmt: skip
    common = {
        "config": size,
        "objective": name,
        "loss_type": str(config.objective.loss_type),
        "params": n_params,
        "frozen_models": plan.frozen_models(frozen),
        "devices": mesh.size,
        "remat": config.model.remat,
        "dtype": config.model.dtype,
    }
    return [{**common, **row} for row in rows]


def offline_program(config, objective, tx, schedule, shardings, batch_sharding, mesh, rules,
                    frozen_shardings, state, frozen, batches, args) -> list[dict]:  # fmt: skip
    """The jitted, donating train step of an offline objective, timed."""
    import jax

    from align_jax import models
    from align_jax.training import plan
    from align_jax.training import step as step_lib

    del rules
    fn = step_lib.jit_train_step(
        step_lib.make_train_step(objective, tx, schedule, config.optimizer.grad_accum_steps),
        shardings, batch_sharding, mesh, frozen_shardings,
    )  # fmt: skip
    base_rng = jax.random.key(config.seed)
    t0 = time.perf_counter()
    step = fn.lower(state, batches[0], base_rng, frozen).compile()
    compile_s = time.perf_counter() - t0
    live, losses = {"state": state}, []

    def call(i):
        rng = jax.random.fold_in(base_rng, i)
        live["state"], metrics = step(live["state"], batches[i % N_BATCHES], rng, frozen)
        losses.append(float(metrics["loss"]))  # blocks until the step is done

    timing = timed(call, args.steps, args.warmup)
    seq = int(config.data.seq_len)
    tokens = objective.tokens_per_batch(batches[0])
    passes = 1 + len(plan.frozen_models(frozen)) / 3  # a frozen model's forward: a third
    flops = models.train_flops_per_token(config.model, seq) * tokens * passes
    return [
        dict(program="train_step", rows=tokens // seq, seq=seq, updates=1, tokens=tokens,
             model_flops=flops, compile_s=round(compile_s, 2), final_loss=losses[-1], **timing)
    ]  # fmt: skip


def online_programs(config, objective, tx, schedule, shardings, batch_sharding, mesh, rules,
                    frozen_shardings, state, frozen, batches, args) -> list[dict]:  # fmt: skip
    """An online objective's update program (a rollout batch's optimizer updates) and its
    prepare program, built by `RLStep.lower` and each timed alone."""
    import jax

    from align_jax import models
    from align_jax.training.rl_step import RLStep

    rl = RLStep(
        objective, tx, schedule, config.optimizer.grad_accum_steps, shardings, batch_sharding,
        mesh, rules, frozen_shardings,
    )  # fmt: skip
    base_rng = jax.random.key(config.seed)
    t0 = time.perf_counter()
    lowered = rl.lower(state, batches[0], base_rng, frozen)  # traces both programs
    t1 = time.perf_counter()
    prepare = lowered["prepare"].compile()
    t2 = time.perf_counter()
    update = lowered["update"].compile()
    t3 = time.perf_counter()
    live, losses = {"state": state}, []

    def run_prepare(i):
        s = live["state"]
        out, _, _ = prepare(s["params"], frozen, batches[i % N_BATCHES], s.get("objective", {}))
        return jax.block_until_ready(out)

    prepared = [run_prepare(i) for i in range(N_BATCHES)]  # the update's inputs, untimed
    prepare_timing = timed(run_prepare, args.steps, args.warmup)

    def run_update(i):
        rng = jax.random.fold_in(base_rng, i)
        live["state"], metrics = update(live["state"], prepared[i % N_BATCHES], rng, frozen)
        losses.append(float(metrics["loss"]))  # blocks until the updates are done

    update_timing = timed(run_update, args.steps, args.warmup)

    # Model FLOPs as plan.py's `_online_programs` counts them.
    rows, width = batches[0]["tokens"].shape
    per_token = models.train_flops_per_token(config.model, width)
    trained = sum(
        v.size
        for k, v in lowered["prepared"].items()
        if (k == "tokens" or k.endswith("_tokens")) and len(v.shape) == 2
    )
    passes = objective.updates_per_step // objective.num_minibatches
    if objective.value_model is not None:  # trained in the same updates
        per_token += models.train_flops_per_token(objective.value_model.model, width)
    forward = models.train_flops_per_token(config.model, width) / 3  # a policy forward
    return [
        dict(program="update", rows=rows, seq=width, updates=objective.updates_per_step,
             tokens=trained * passes, model_flops=per_token * trained * passes,
             compile_s=round(t1 - t0 + t3 - t2, 2), final_loss=losses[-1], **update_timing),
        dict(program="prepare", rows=rows, seq=width, updates=0, tokens=rows * width,
             model_flops=forward * rows * width * objective.prepare_forwards,
             prepare_forwards=objective.prepare_forwards, compile_s=round(t2 - t1, 2),
             **prepare_timing),
    ]  # fmt: skip


# --- output --------------------------------------------------------------------------------


def _max_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def others(r: dict) -> str:
    """Other processes' cores while `r` was timed; "-" for a window too short to tell
    (/proc counts CPU time in 10 ms ticks)."""
    return f"{r['others_cores']:>6.2f}" if r["timed_s"] > 0.1 else f"{'-':>6}"


def print_table(results: list[dict], peak: dict) -> None:
    header = (
        f"{'config':<9} {'objective':<9} {'program':<10} {'params':>11} {'rows x seq':>11} "
        f"{'upd':>3} {'compile s':>9} {'step s':>8} {'tokens/s':>9} {'GFLOP/step':>10} "
        f"{'GFLOP/s':>8} {'MFU':>6} {'others':>6}"
    )
    print()
    print(
        f"matmul peak (same run): {peak['gflops']:.1f} GFLOP/s "
        f"(before {peak['before_gflops']:.1f}, after {peak['after_gflops']:.1f})"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ran_model = r["model_flops"] > 0  # GRPO's prepare may run none: no rate to show
        rate = (
            f"{r['tokens_per_s']:>9.0f} {r['model_flops'] / 1e9:>10.2f} "
            f"{r['model_gflops']:>8.1f} {r['mfu'] * 100:>5.1f}%"
            if ran_model
            else f"{'-':>9} {0:>10.2f} {'-':>8} {'-':>6}"
        )
        print(
            f"{r['config']:<9} {r['objective']:<9} {r['program']:<10} {r['params']:>11,} "
            f"{r['rows']:>4} x {r['seq']:<4} {r['updates']:>3} {r['compile_s']:>9.1f} "
            f"{r['step_s']:>8.3f} {rate} {others(r)}"
        )
    busy = [f"{r['config']}/{r['objective']}/{r['program']}" for r in results
            if others(r).strip() != "-" and r["others_cores"] > 0.2]  # fmt: skip
    if busy or peak["others_cores"] > 0.2:
        print(
            "WARNING: other processes used CPU during the measurement "
            f"({', '.join(busy) or 'matmul peak'}); these figures are contended, run again."
        )
    print(
        "(upd: optimizer updates per call; GFLOP/step: model FLOPs per call, see the docstring; "
        "others: cores' worth of CPU used by other processes while the calls were timed)"
    )


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except cli.UsageError as e:
        return cli.report(e)
    bench_train._set_env(args.devices, args.xla_flags)
    import jax

    try:  # every shape checked before anything is measured
        for size in args.configs:
            for name in args.objectives:
                make_config(name, size, args)
    except cli.UsageError as e:
        return cli.report(e)

    if len(jax.devices()) < args.devices:
        raise SystemExit(f"--devices={args.devices} but jax sees {len(jax.devices())}")
    load_start = os.getloadavg()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.devices} of "
        f"{len(jax.devices())} device(s), {os.cpu_count()} cores; load average "
        f"{' '.join(f'{x:.2f}' for x in load_start)}",
        flush=True,
    )
    before = bench_train.matmul_peak(args.matmul_n, args.matmul_repeats)
    bench_train._print_peak("before", before)
    results = []
    for size in args.configs:
        for name in args.objectives:
            rows = bench_objective(name, size, args)
            for r in rows:
                r["max_rss_gb"] = round(_max_rss_gb(), 2)
                print(
                    f"{size} {name} {r['program']}: {r['step_s']:.3f} s/call (others "
                    f"{r['others_cores']:.2f} cores; max RSS {r['max_rss_gb']:.2f} GB)",
                    flush=True,
                )
            results += rows
    after = bench_train.matmul_peak(args.matmul_n, args.matmul_repeats)
    bench_train._print_peak("after", after)
    load_end = os.getloadavg()
    # The higher of the two medians: a contended matmul run must not inflate MFU.
    peak = {
        "n": args.matmul_n,
        "gflops": max(before["gflops"], after["gflops"]),
        "before_gflops": before["gflops"],
        "after_gflops": after["gflops"],
        "others_cores": max(before["others_cores"], after["others_cores"]),
    }
    for r in results:
        r["tokens_per_s"] = r["tokens"] / r["step_s"]
        r["model_gflops"] = r["model_flops"] / r["step_s"] / 1e9
        r["mfu"] = r["model_gflops"] / peak["gflops"]
    print_table(results, peak)
    loads = [" ".join(f"{x:.2f}" for x in load) for load in (load_start, load_end)]
    print(f"load average (1, 5, 15 min): start {loads[0]}, end {loads[1]}; "
          f"max RSS {_max_rss_gb():.2f} GB")  # fmt: skip
    print()
    extra = {
        "matmul_peak_gflops": round(peak["gflops"], 2),
        "matmul_peak_before_gflops": round(before["gflops"], 2),
        "matmul_peak_after_gflops": round(after["gflops"], 2),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
    }
    for r in results:
        print("RESULT " + json.dumps({**extra, **r}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "cores": os.cpu_count(), "matmul_peak": peak,
                       "loadavg_start": load_start, "loadavg_end": load_end,
                       "results": results}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
