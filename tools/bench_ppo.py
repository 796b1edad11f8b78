"""Benchmark of one online PPO step on this machine, next to a GRPO step on the same model
shape and the same rows and tokens: where each step's time goes.

Prints figures; asserts nothing about timings. For each model shape (`--configs`, the shapes
of tools/bench_sample.py; random init, fp32, one-device mesh) it

1. runs GRPO exactly as tools/bench_grpo.py does (its `make_data`, `make_config`,
   `in_loop`: configs/grpo/tiny.py, the RL prompts of experiments/tiny_tasks.py, the cheap
   built-in `length` reward in this process, `--prompts` P × `--group` G completions of
   `--new_tokens` tokens, `--steps` steps, one checkpoint at the end);
2. runs PPO (configs/ppo/tiny.py through the same `make_config`) on P·G prompts × 1
   completion, so both steps sample, score and train the same P·G rows of the same width
   (`max_prompt_len` + new tokens); the same reward; `init_from` (the frozen reference, and
   the policy's and value model's start, the value model with a new scalar head) is the
   GRPO run's workdir, which has the same model shape; `--ppo_epochs` × `--num_minibatches`
   updates per rollout, default 1 × 1, one update per rollout like GRPO's default;
3. reports, for both, the medians over steps 2.. (step 1 compiles) of `time/sampling`,
   `time/rewards`, `time/reference` ("prepare": the jitted no-gradient pass) and
   `time/update`, their sum and the step's wall time (tools/bench_grpo.py's docstring says
   what each covers);
4. splits PPO's prepare into its three forwards, each timed alone (`--forward_runs` calls of
   its own jitted program after one that compiles, median) on a batch of the same shape
   (P·G rows × width, random tokens, every slot real): `policy` (`policy_token_logps` with the
   PPO run's final policy, at the rollout temperature), `reference` (the same program with
   the GRPO run's parameters, the reference PPO loaded) and `value` (`apply_model` of the
   value model, `ppo.value_model(config)`, with the PPO run's final value parameters: the
   policy's architecture with a scalar head instead of the LM head). `rest` = prepare − the
   three: per-token rewards, GAE, whitening, metrics, plus whatever the three cost more in
   the loop than alone. GRPO's prepare at β = 0 with one update per rollout runs no forward
   at all (the update's own forward gives the old log-probs, objectives/grpo.py). The PPO
   parameters come from `loading.load_params` with both trees' shapes (`load_run` hands on
   the policy alone).

Shares are of the sum of the four parts. Model FLOPs, as tools/bench_grpo.py counts them
(`train_flops_per_token × rows × width`; a forward is a third): PPO's update trains both
models (the value model without the LM head's matmul) `ppo_epochs` times; its prepare is two
policy forwards and one value forward. They are shown as GFLOP/s next to a jitted fp32
matmul's peak measured in the same process (`--matmul_n 0` skips it).

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_ppo.py       # tiny + llama25m, 5 steps
    .venv/bin/python tools/bench_ppo.py --configs tiny --ppo_epochs 2 --num_minibatches 2

Output: a table per config (rows: the parts; columns: GRPO s, share, PPO s, share), a
GFLOP/s table, then one JSON line per config, prefixed `RESULT `.

Measured on this machine (2 CPU cores, jax 0.10.2) with the first command above, defaults:
GRPO 8 prompts × G 8 against PPO 64 prompts × 1, so 64 rows × 48 slots each (prompts in 16
slots, 32 new tokens); PPO 1 epoch × 1 minibatch; 5 steps, medians of steps 2-5; each forward
alone 3 times. A quiet run (other processes < 0.2 cores throughout; 3.5 min wall):

    seconds (share of sum)   GRPO           PPO            GRPO           PPO
                             tiny (0.52M)                  llama25m (26.1M)
    sampling                 0.068 (21%)    0.078 (11%)    1.275 (24%)    1.418 (11%)
    rewards                  0.003  (1%)    0.004  (1%)    0.003  (0%)    0.004  (0%)
    prepare                  0.001  (0%)    0.164 (23%)    0.000  (0%)    3.060 (25%)
      policy                     -          0.048  (7%)        -          0.888  (7%)
      reference                  -          0.051  (7%)        -          1.020  (8%)
      value                      -          0.057  (8%)        -          0.814  (7%)
      rest                       -          0.007  (1%)        -          0.339  (3%)
    update                   0.245 (77%)    0.458 (65%)    3.950 (76%)    7.931 (64%)
    step                     0.328          0.716          5.190         12.407

    llama25m GFLOP/s: update GRPO 103.5, PPO 93.4; PPO's prepare 125.2; forwards alone
    policy 153.6, reference 133.7, value 135.9; fp32 2048² matmul 133.3

How to read them. On llama25m a PPO step costs 2.4× a GRPO step (12.4 s against 5.2 s) for
the same rows and tokens, and all of the difference is in the two jitted passes:
- the update is 2.0× (7.9 s against 4.0 s): PPO trains two models of the same trunk, and the
  value model lacks only the LM head's matmul (vocab 8192 × 512, ~19% of the policy's matmul
  FLOPs), so it costs nearly what the policy does;
- prepare is 3.1 s (25% of the step) against nothing: GRPO at β = 0 with one update per
  rollout runs no forward there (objectives/grpo.py's `separate_old`: the update's own
  forward gives the old log-probs), while PPO's always runs three, each 0.8-1.0 s, about a
  quarter of GRPO's update (a forward is a third of forward + backward): the policy's
  log-probs (the KL penalty of the per-token rewards needs them even on-policy), the
  reference's, and the values GAE needs. `rest` (per-token rewards, GAE, whitening, metrics,
  and whatever the fused program costs more than three calls) is 0.34 s, ~10% of prepare; on
  tiny it is within noise;
- sampling does the same work on both sides (the sampler repeats each prompt G times before
  its prefill, so P × G and P·G × 1 are the same shapes) and is within 11%; the reward is
  negligible.
On tiny the step is 2.2× (0.72 s against 0.33 s), the update 1.9×.

Contention skews the comparison: an earlier run, with another process using ~1 core during
tiny, the GRPO llama25m loop and the value forward but not the PPO llama25m loop, read
llama25m GRPO 7.07 s (update 5.35), PPO 10.27 s (prepare 2.37, update 6.65), a value forward
of 1.23 s (policy 0.86) and a `rest` of -0.57 s: a ratio of 1.45 instead of 2.4. Compare only
figures whose "other processes" numbers (printed per loop step and per forward call) are near
0. The forwards alone run at 134-154 GFLOP/s, above the 2048² matmul's 133: that peak is one
matmul shape's, a yardstick rather than a ceiling.

`--configs tiny --ppo_epochs 2 --num_minibatches 2 --matmul_n 0` (configs/ppo/tiny.py's
2 × 2), quiet: PPO's update 0.571 s (four updates of 32 rows), prepare 0.112 s, step 0.761 s;
GRPO's step 0.284 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

# tools/ is on sys.path when a tool runs as a script (the script's folder comes first).
from bench_grpo import ONE_DEVICE, PARTS, in_loop, make_config, one_device_error, wait_quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORWARDS = ("policy", "reference", "value")


def parse_args(argv, cli, shapes):
    """The flags, checked; `cli` is align_jax.cli, `shapes` tools/bench_sample.py's CONFIGS."""
    p = cli.ArgumentParser(
        prog="tools/bench_ppo.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--configs", default="tiny,llama25m", help=f"comma-separated, from {shapes}")
    p.add_argument("--steps", type=int, default=5, help="loop steps per run (the first compiles)")
    p.add_argument("--prompts", type=int, default=8, help="GRPO's prompts per step (P)")
    p.add_argument("--group", type=int, default=8, help="GRPO's completions per prompt (G)")
    p.add_argument("--new_tokens", type=int, default=32, help="config.rollout.max_new_tokens")
    p.add_argument("--ppo_epochs", type=int, default=1, help="PPO's passes per rollout batch")
    p.add_argument("--num_minibatches", type=int, default=1, help="PPO's updates per pass")
    p.add_argument("--forward_runs", type=int, default=3, help="timed calls of each forward")
    p.add_argument("--matmul_n", type=int, default=2048, help="side of the peak matmul (0: skip)")
    p.add_argument("--matmul_repeats", type=int, default=5)
    p.add_argument(
        "--quiet_wait",
        type=float,
        default=15.0,
        help="before each run and the forwards, wait up to this many seconds for other "
        "processes to quieten (tools/bench_grpo.py's `wait_quiet`; 0: don't wait)",
    )
    p.add_argument("--keep", default="", help="write the data and runs here and keep them")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(shapes))
    if unknown or not args.configs:
        raise cli.UsageError(f"--configs: unknown {unknown}; choose from {shapes}")
    for flag in ("prompts", "group", "new_tokens", "ppo_epochs", "num_minibatches",
                 "forward_runs"):  # fmt: skip
        if getattr(args, flag) < 1:
            raise cli.UsageError(f"--{flag}={getattr(args, flag)}; expected an integer >= 1")
    if args.steps < 2:
        raise cli.UsageError(f"--steps={args.steps}; expected >= 2 (step 1 compiles)")
    if (args.prompts * args.group) % args.num_minibatches:
        raise cli.UsageError(
            f"--num_minibatches={args.num_minibatches} does not divide the "
            f"{args.prompts * args.group} rows (--prompts × --group)"
        )
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        raise cli.UsageError(f"--keep={args.keep!r} is not empty; name a new or empty folder")
    return args


def ppo_config(name: str, data_dir: str, args, cli, model_fields, init_from: str):
    """configs/ppo/tiny.py as tools/bench_grpo.py sets GRPO up, on P·G prompts × 1."""
    rows = argparse.Namespace(**{**vars(args), "prompts": args.prompts * args.group, "group": 1})
    config = make_config(name, data_dir, rows, cli, model_fields, config_file="ppo/tiny.py")
    with config.unlocked():
        config.init_from = init_from
        config.objective.update(ppo_epochs=args.ppo_epochs, num_minibatches=args.num_minibatches)
    return config


def forward_split(config, ppo_dir: str, grpo_dir: str, runs: int, CpuShare) -> dict:
    """Seconds (median of `runs` calls) of PPO's three prepare forwards, each alone (see the
    module docstring), and what other processes used during each call."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from align_jax import loading, models, parallel
    from align_jax.data import prompts as prompts_data
    from align_jax.objectives.common import policy_token_logps
    from align_jax.objectives.ppo import value_model

    mesh = parallel.make_mesh(ONE_DEVICE)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    graphdef, shapes, axes = models.abstract_params(config.model)
    value_graphdef, value_shapes, value_axes = models.abstract_params(value_model(config).model)
    params = loading.load_params(
        ppo_dir,
        {"policy": shapes, "value": value_shapes},
        {
            "policy": models.param_shardings(shapes, axes, mesh, rules),
            "value": models.param_shardings(value_shapes, value_axes, mesh, rules),
        },
    )
    reference = loading.load_run(grpo_dir, mesh=mesh)[2]

    rows = int(config.data.batch_size * config.objective.num_generations)
    width = prompts_data.max_prompt_len(config.data) + int(config.rollout.max_new_tokens)
    tokens = np.random.default_rng(0).integers(4, config.model.vocab_size, (rows, width))
    batch = {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (rows, width)),
        "segment_ids": jnp.ones((rows, width), jnp.int32),
    }
    temperature = float(config.rollout.temperature) or 1.0
    logps = jax.jit(lambda p, b: policy_token_logps(graphdef, p, b, temperature)[0])
    values = jax.jit(
        lambda p, b: models.apply_model(
            value_graphdef, p, b["tokens"][:, :-1], b["positions"][:, :-1],
            b["segment_ids"][:, :-1],
        ).astype(jnp.float32)
    )  # fmt: skip
    calls = {
        "policy": (logps, params["policy"]),
        "reference": (logps, reference),
        "value": (values, params["value"]),
    }
    out = {"forward_rows": rows, "forward_width": width}
    with parallel.sharding_context(mesh, rules):
        for name, (fn, p) in calls.items():
            jax.block_until_ready(fn(p, batch))  # compiles (the reference reuses the policy's)
            times, others = [], []
            for _ in range(runs):
                with CpuShare() as share:
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn(p, batch))
                    times.append(time.perf_counter() - t0)
                others.append(round(share.others, 2))
            out[name] = statistics.median(times)
            out[f"{name}_runs"] = [round(t, 4) for t in times]
            out[f"{name}_others_cores"] = others
    return out


def bench_config(name: str, root: str, args, cli, model_fields, CpuShare) -> dict:
    from align_jax import models
    from align_jax.objectives.ppo import value_model

    data_dir = os.path.join(root, "data")
    grpo_config = make_config(name, data_dir, args, cli, model_fields)
    grpo_dir, ppo_dir = os.path.join(root, f"grpo_{name}"), os.path.join(root, f"ppo_{name}")
    config = ppo_config(name, data_dir, args, cli, model_fields, init_from=grpo_dir)
    rows = args.prompts * args.group
    width = int(config.data.max_prompt_len) + args.new_tokens
    row = {
        "config": name,
        "params": models.count_params(config.model),
        "rows": rows,
        "width": width,
        "grpo_prompts": args.prompts,
        "grpo_group": args.group,
        "ppo_prompts": rows,
        "new_tokens": args.new_tokens,
        "ppo_epochs": args.ppo_epochs,
        "num_minibatches": args.num_minibatches,
        "steps": args.steps,
        "mesh": ONE_DEVICE,
        "dtype": config.model.dtype,
    }
    for label, cfg, workdir in (("grpo", grpo_config, grpo_dir), ("ppo", config, ppo_dir)):
        row[f"{label}_others_cores_before"] = wait_quiet(args.quiet_wait, CpuShare)
        print(f"{name}: {label.upper()}, {args.steps} loop steps ...", flush=True)
        row[label] = in_loop(cfg, workdir, CpuShare)
    row["forwards_others_cores_before"] = wait_quiet(args.quiet_wait, CpuShare)
    print(f"{name}: PPO's prepare forwards, {args.forward_runs} runs each ...", flush=True)
    row["forwards"] = forward_split(config, ppo_dir, grpo_dir, args.forward_runs, CpuShare)
    fwd = row["forwards"]
    row["forwards"]["rest"] = row["ppo"]["prepare"] - sum(fwd[k] for k in FORWARDS)

    per_row = rows * width
    policy_flops = models.train_flops_per_token(config.model, width) * per_row
    value_flops = models.train_flops_per_token(value_model(config).model, width) * per_row
    gf = lambda flops, s: flops / s / 1e9  # noqa: E731
    row["gflops"] = {
        "grpo_update": gf(policy_flops, row["grpo"]["update"]),
        "ppo_update": gf(args.ppo_epochs * (policy_flops + value_flops), row["ppo"]["update"]),
        "ppo_prepare": gf((2 * policy_flops + value_flops) / 3, row["ppo"]["prepare"]),
        "policy_forward": gf(policy_flops / 3, fwd["policy"]),
        "reference_forward": gf(policy_flops / 3, fwd["reference"]),
        "value_forward": gf(value_flops / 3, fwd["value"]),
    }
    return row


def print_table(row: dict, peak) -> None:
    g, p, f = row["grpo"], row["ppo"], row["forwards"]
    print()
    print(
        f"{row['config']} ({row['params']:,} parameters): {row['rows']} rows × {row['width']} "
        f"slots; GRPO {row['grpo_prompts']} prompts × {row['grpo_group']}, PPO "
        f"{row['ppo_prompts']} × 1, {row['ppo_epochs']} epoch(s) × {row['num_minibatches']} "
        "minibatch(es); medians of steps 2.."
    )
    head = f"{'':<13} {'GRPO s':>8} {'share':>6} {'PPO s':>8} {'share':>6}"
    print(head)
    print("-" * len(head))

    def line(label, gs, ps):
        cell = lambda s, total: (  # noqa: E731
            f"{s:>8.3f} {'%.0f%%' % (100 * s / total):>6}" if s is not None else f"{'-':>8} {'':>6}"
        )
        print(f"{label:<13} {cell(gs, g['sum'])} {cell(ps, p['sum'])}")

    for key, _ in PARTS:
        line(key, g[key], p[key])
        if key == "prepare":
            for name in (*FORWARDS, "rest"):  # GRPO's prepare runs no forward here
                line(f"  {name}", None, f[name])
    line("sum", g["sum"], p["sum"])
    line("step", g["step"], p["step"])
    print(
        f"prepare's split: each forward alone, {len(f['policy_runs'])} runs (other processes, "
        f"cores: policy {f['policy_others_cores']}, reference {f['reference_others_cores']}, "
        f"value {f['value_others_cores']}); rest = prepare - the forwards"
    )
    print(
        f"other processes during the loops' steps 2.. (cores): GRPO {g['others_cores_steps']}, "
        f"PPO {p['others_cores_steps']}"
    )
    print(
        f"sampler tokens/s: GRPO {g['tok_s']:.0f} ({g['completion_length']:.1f} tokens/row), "
        f"PPO {p['tok_s']:.0f} ({p['completion_length']:.1f} tokens/row)"
    )
    gf = row["gflops"]
    print(
        "model GFLOP/s: update GRPO {grpo_update:.1f}, PPO {ppo_update:.1f}; prepare PPO "
        "{ppo_prepare:.1f}; forwards alone: policy {policy_forward:.1f}, "
        "reference {reference_forward:.1f}, value {value_forward:.1f}".format(**gf)
        + (f"; fp32 matmul peak {peak['gflops']:.1f}" if peak else "")
    )


def main(argv=None) -> int:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]
    import bench_sample
    import bench_train

    from align_jax import cli

    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, cli, bench_sample.CONFIGS)
    except cli.UsageError as e:
        return cli.report(e)
    if (error := one_device_error(cli)) is not None:
        return cli.report(error)
    import jax

    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs); "
        f"GRPO {args.prompts} prompts x G={args.group} vs PPO {args.prompts * args.group} "
        f"prompts x 1 ({args.ppo_epochs} epochs x {args.num_minibatches} minibatches), "
        f"{args.new_tokens} new tokens, {args.steps} steps",
        flush=True,
    )
    peak = bench_train.matmul_peak(args.matmul_n, args.matmul_repeats) if args.matmul_n else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        root = args.keep or tmp
        for name in args.configs:
            rows.append(
                bench_config(name, root, args, cli, bench_sample.model_fields, bench_train.CpuShare)
            )
    for r in rows:
        print_table(r, peak)
    print()
    for r in rows:
        if peak:
            r["matmul_peak_gflops"] = round(peak["gflops"], 2)
        print("RESULT " + json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
