"""Benchmark of the pretraining train step on this machine: step time, tokens/s, TFLOP/s, MFU.

Prints figures; asserts nothing about timings. In one process it measures

1. the peak of a jitted 2048 x 2048 @ 2048 x 2048 fp32 matmul (median GFLOP/s), and
2. for each model config, the full train step (forward, backward, clipping, AdamW update)
   built exactly as `align_jax.training.loop` builds it: mesh from `config.mesh`, parameter
   and optimizer-state shardings, `make_train_step` + `jit_train_step` with donation, inside
   `parallel.sharding_context`. Batches are synthetic packed rows (random tokens, 1-4
   documents per row) carrying the pipeline's fields and dtypes, placed with the loop's
   batch shardings; no data pipeline or tokenizer is needed.

Model FLOPs come from `align_jax.models.train_flops_per_token` (6N + attention, PaLM's
count); MFU is achieved FLOP/s over the matmul peak measured in the same run.

    .venv/bin/python tools/bench_train.py                       # tiny + llama25m, 1 device
    .venv/bin/python tools/bench_train.py --configs llama25m --remat full --steps 10
    .venv/bin/python tools/bench_train.py --devices 8           # 8 simulated CPU devices
    .venv/bin/python tools/bench_train.py --cost                # + XLA cost analysis

Output: a table, then one JSON line per config (prefix `RESULT `, easy to grep).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from align_jax import cli  # imports no jax: XLA_FLAGS can still be set (_set_env)

CONFIGS = ("tiny", "llama25m")
# Per-config default (batch, seq): the tiny config's own data shape; for llama25m a batch
# that keeps every matmul large (4096 tokens per step) and the whole step under ~2 GB.
DEFAULT_SHAPES = {"tiny": (16, 128), "llama25m": (8, 512)}


def parse_args(argv=None):
    p = cli.ArgumentParser(
        prog="tools/bench_train.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {CONFIGS}")
    p.add_argument("--steps", type=int, default=8, help="timed train steps per config")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--batch", type=int, default=0, help="global batch rows (0: per-config default)")
    p.add_argument("--seq", type=int, default=0, help="sequence length (0: per-config default)")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="CPU devices; >1 simulates them with --xla_force_host_platform_device_count "
        "(the 2 real cores are then shared, so expect it to be slower)",
    )
    p.add_argument(
        "--remat", default="", help="none | full | dots | dots_no_batch (default: the config's)"
    )
    p.add_argument(
        "--dtype", default="", help="compute dtype float32 | bfloat16 (default: the config's)"
    )
    p.add_argument("--matmul_n", type=int, default=2048, help="side of the peak matmul")
    p.add_argument("--matmul_repeats", type=int, default=10, help="timed repeats of the matmul")
    p.add_argument("--cost", action="store_true", help="also print XLA's compiled cost analysis")
    p.add_argument(
        "--xla_flags",
        default="",
        help="appended to XLA_FLAGS before jax starts, e.g. '--xla_cpu_prefer_vector_width=512'",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.configs = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        raise cli.UsageError(f"--configs: unknown {unknown}; choose from {CONFIGS}")
    return args


def _set_env(devices: int, extra_flags: str = "") -> None:
    """XLA_FLAGS must be final before jax is imported."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = f"{os.environ.get('XLA_FLAGS', '')} {extra_flags}".strip()
    if devices > 1 and "xla_force_host_platform_device_count" not in flags:
        flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    os.environ["XLA_FLAGS"] = flags


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(name: str, args):
    """The run config for `name`, with the benchmark's overrides."""
    from align_jax.objectives import config_for

    if name == "tiny":
        c = cli.load_config(os.path.join(_repo_root(), "configs", "pretrain", "tiny.py"))
    else:
        # llama25m: Llama-shaped, 26,089,984 parameters (count_params; 17.7M of them in the
        # layers, 8.4M in the untied embedding + LM head).
        c = config_for("pretrain")
        c.model.update(
            vocab_size=8192,
            d_model=512,
            n_layers=6,
            n_heads=8,
            n_kv_heads=4,
            head_dim=64,
            mlp_dim=1408,
            max_seq_len=2048,
        )
    batch, seq = DEFAULT_SHAPES[name]
    c.data.batch_size = args.batch or batch
    c.data.seq_len = args.seq or seq
    c.model.max_seq_len = max(c.model.max_seq_len, c.data.seq_len)
    if args.remat:
        c.model.remat = args.remat
    if args.dtype:
        c.model.dtype = args.dtype
    c.total_steps = 10_000  # the schedule only; keeps the benchmark in the warmup-free regime
    c.optimizer.warmup_steps = 10
    return c


def synthetic_batch(rng, batch: int, seq: int, vocab: int) -> dict:
    """Packed rows like the pretraining pipeline's: 1-4 documents per row, no padding."""
    import numpy as np

    inputs = rng.integers(0, vocab, (batch, seq), dtype=np.int32)
    targets = rng.integers(0, vocab, (batch, seq), dtype=np.int32)
    segment_ids = np.zeros((batch, seq + 1), np.int32)
    positions = np.zeros((batch, seq + 1), np.int32)
    for r in range(batch):
        n_docs = int(rng.integers(1, 5))
        cuts = np.sort(rng.choice(np.arange(1, seq + 1), n_docs - 1, replace=False))
        bounds = [0, *cuts.tolist(), seq + 1]
        for d, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            segment_ids[r, a:b] = d + 1
            positions[r, a:b] = np.arange(b - a)
    seg = segment_ids
    loss_mask = ((seg[:, :-1] == seg[:, 1:]) & (seg[:, 1:] > 0)).astype(np.float32)
    return {
        "inputs": inputs,
        "targets": targets,
        "segment_ids": seg[:, :-1].copy(),
        "positions": positions[:, :-1].copy(),
        "loss_mask": loss_mask,
    }


class CpuShare:
    """What else ran on the machine during a measurement (Linux `/proc`; zeros elsewhere).

    `others`: cores' worth of CPU time used by other processes; `steal`: cores' worth taken
    by the hypervisor; `own`: cores' worth used by this process. Shared CPU machines make
    timings bimodal, so every figure carries these to tell a clean run from a contended one.
    """

    def __init__(self):
        self.others = self.steal = self.own = 0.0

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
        steal = v[7] if len(v) > 7 else 0
        return busy, steal, int(own[11]) + int(own[12])  # utime + stime, all threads

    def __enter__(self):
        self._t0, self._s0 = time.perf_counter(), self._read()
        return self

    def __exit__(self, *exc):
        s1, wall = self._read(), time.perf_counter() - self._t0
        if self._s0 is None or s1 is None or wall <= 0:
            return
        hz = os.sysconf("SC_CLK_TCK")
        busy, steal, own = (b - a for a, b in zip(self._s0, s1, strict=True))
        self.own = own / hz / wall
        self.others = max(busy - own, 0) / hz / wall
        self.steal = steal / hz / wall


def matmul_peak(n: int, repeats: int) -> dict:
    """Median GFLOP/s of a jitted fp32 n x n @ n x n matmul on the first device."""
    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(ka, (n, n), jnp.float32), dev)
    b = jax.device_put(jax.random.normal(kb, (n, n), jnp.float32), dev)
    f = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        f(a, b).block_until_ready()
    times = []
    with CpuShare() as share:
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "n": n,
        "median_s": med,
        "gflops": 2 * n**3 / med / 1e9,
        "best_gflops": 2 * n**3 / min(times) / 1e9,
        "others_cores": round(share.others, 2),
    }


def bench_config(name: str, args) -> dict:
    import jax
    import numpy as np

    from align_jax import models, objectives, parallel
    from align_jax.training import step as step_lib
    from align_jax.training.optimizer import make_optimizer

    config = make_config(name, args)
    devices = jax.devices()[: args.devices]
    # The loop's construction, in the loop's order (align_jax/training/loop.py::_train).
    mesh = parallel.make_mesh(config.mesh, devices)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    graphdef, param_shapes, param_axes = models.abstract_params(config.model)
    param_shardings = models.param_shardings(param_shapes, param_axes, mesh, rules)
    objective = objectives.build(config, graphdef)
    tx, schedule = make_optimizer(config.optimizer, config.total_steps)
    shardings = step_lib.state_shardings(tx, param_shapes, param_shardings, mesh)

    batch_rows, seq = config.data.batch_size, config.data.seq_len
    rng = np.random.default_rng(args.seed)
    n_batches = 4  # a few distinct batches, cycled, so no step sees identical inputs twice in a row
    host_batches = [
        synthetic_batch(rng, batch_rows, seq, config.model.vocab_size) for _ in range(n_batches)
    ]

    result: dict = {"config": name}
    with parallel.sharding_context(mesh, rules):
        _, params, _ = models.init_params(config.model, mesh, rules, config.seed)
        state = step_lib.init_state(tx, params, shardings)
        n_params = sum(int(x.size) for x in jax.tree.leaves(state["params"]))
        batch_sharding = step_lib.batch_shardings(host_batches[0], mesh, rules)
        batches = [
            {k: jax.device_put(v, batch_sharding[k]) for k, v in b.items()} for b in host_batches
        ]
        train_step = step_lib.jit_train_step(
            step_lib.make_train_step(objective, tx, schedule, config.optimizer.grad_accum_steps),
            shardings,
            batch_sharding,
            mesh,
        )
        base_rng = jax.random.key(config.seed)

        t0 = time.perf_counter()
        compiled = train_step.lower(state, batches[0], base_rng, None).compile()
        compile_s = time.perf_counter() - t0
        if args.cost:
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            result["xla_cost_flops"] = float(cost.get("flops", 0.0))
            result["xla_cost_bytes"] = float(cost.get("bytes accessed", 0.0))
            mem = compiled.memory_analysis()
            if mem is not None:
                result["temp_bytes"] = int(mem.temp_size_in_bytes)
                result["argument_bytes"] = int(mem.argument_size_in_bytes)

        for i in range(args.warmup):
            state, metrics = train_step(state, batches[i % n_batches], base_rng, None)
            float(metrics["loss"])
        times = []
        losses = []
        with CpuShare() as share:
            for i in range(args.warmup, args.warmup + args.steps):
                rng_i = jax.random.fold_in(base_rng, i)
                t = time.perf_counter()
                state, metrics = train_step(state, batches[i % n_batches], rng_i, None)
                losses.append(float(metrics["loss"]))  # blocks until the step is done
                times.append(time.perf_counter() - t)

    step_s = statistics.median(times)
    tokens = batch_rows * seq
    flops_per_token = models.train_flops_per_token(config.model, seq)
    achieved = flops_per_token * tokens / step_s
    n_dev = len(devices)
    result.update(
        params=n_params,
        batch=batch_rows,
        seq=seq,
        devices=n_dev,
        remat=config.model.remat,
        dtype=config.model.dtype,
        compile_s=round(compile_s, 2),
        step_s=step_s,
        step_s_min=min(times),
        step_s_max=max(times),
        tokens_per_s=tokens / step_s,
        flops_per_token=flops_per_token,
        tflops=achieved / 1e12,
        final_loss=losses[-1],
        own_cores=round(share.own, 2),
        others_cores=round(share.others, 2),
        steal_cores=round(share.steal, 2),
    )
    if args.cost:
        result["xla_flops_over_model"] = result["xla_cost_flops"] / (flops_per_token * tokens)
    return result


def _print_peak(label: str, peak: dict) -> None:
    print(
        f"matmul {peak['n']}^2 fp32 ({label}): {peak['gflops']:.1f} GFLOP/s median "
        f"({peak['median_s'] * 1e3:.1f} ms; best {peak['best_gflops']:.1f}; "
        f"other processes {peak['others_cores']:.2f} cores)",
        flush=True,
    )


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except cli.UsageError as e:
        return cli.report(e)
    _set_env(args.devices, args.xla_flags)
    import jax

    names = args.configs
    if len(jax.devices()) < args.devices:
        raise SystemExit(f"--devices={args.devices} but jax sees {len(jax.devices())}")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(jax.devices())} device(s), "
        f"{os.cpu_count()} cores; XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'",
        flush=True,
    )

    before = matmul_peak(args.matmul_n, args.matmul_repeats)
    _print_peak("before", before)
    results = []
    for n in names:
        results.append(bench_config(n, args))
        r = results[-1]
        print(f"{n}: {r['step_s']:.3f} s/step (others {r['others_cores']:.2f} cores)", flush=True)
    after = matmul_peak(args.matmul_n, args.matmul_repeats)
    _print_peak("after", after)
    # The higher of the two medians: a contended matmul run must not inflate MFU. It is one
    # device's rate; simulated devices share the same cores, so MFU is against the machine.
    peak_gflops = max(before["gflops"], after["gflops"])
    for r in results:
        r["mfu"] = r["tflops"] * 1e12 / (peak_gflops * 1e9)

    header = (
        f"{'config':<10} {'params':>11} {'batch x seq':>12} {'dev':>3} {'remat':>6} {'dtype':>8} "
        f"{'compile s':>9} {'step s':>8} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'others':>6}"
    )
    print()
    print(
        f"matmul peak (same run): {peak_gflops:.1f} GFLOP/s "
        f"(before {before['gflops']:.1f}, after {after['gflops']:.1f})"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['config']:<10} {r['params']:>11,} {r['batch']:>5} x {r['seq']:<5} "
            f"{r['devices']:>3} {r['remat']:>6} {r['dtype']:>8} {r['compile_s']:>9.1f} "
            f"{r['step_s']:>8.3f} {r['tokens_per_s']:>9.0f} {r['tflops']:>8.4f} "
            f"{r['mfu'] * 100:>5.1f}% {r['others_cores']:>6.2f}"
        )
    busy = [r["config"] for r in results if r["others_cores"] > 0.2]
    if busy or max(before["others_cores"], after["others_cores"]) > 0.2:
        print(
            "WARNING: other processes used CPU during the measurement "
            f"({', '.join(busy) or 'matmul peak'}); these figures are contended, run again."
        )
    print("(others: cores' worth of CPU used by other processes while the steps were timed)")
    print()
    for r in results:
        print(
            "RESULT "
            + json.dumps(
                {
                    "matmul_peak_gflops": round(peak_gflops, 2),
                    "matmul_peak_before_gflops": round(before["gflops"], 2),
                    "matmul_peak_after_gflops": round(after["gflops"], 2),
                    **r,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
