"""Memory plan of a stage on a TPU topology, from this machine, before renting the TPU.

    python tools/plan.py --config=configs/sft/llama3_8b.py --topology=v5p-64 \
        [--config.data.batch_size=128 --config.model.remat=full ...] [--json=plan.json]

Compiles the stage's programs ahead of time (align_jax/training/plan.py: the train step;
for online RL also the sampler at the configured batch and lengths, and the prepare and
update programs) for the topology's chips, and prints per chip: arguments, outputs that
reuse donated arguments, temporaries, the program's total, the train state and frozen
models resident beside it, the peak against the chip's HBM, whether it fits; model FLOPs per
step (analytic) with XLA's cost analysis beside them as a cross-check; compile times.

`--topology` takes Cloud TPU slice names (`v5p-64` is 32 chips: TensorCores for v4 / v5p,
chips for v5e / v6e) or a torus (`v5p:2x4x4`). The TPU compiler comes from libtpu (the
`tpu` extra: `pip install -e ".[tpu]"`); no TPU is needed. Without libtpu the plan
compiles for as many simulated CPU devices as the topology has chips and says so: the
layout and shardings are the same, but the CPU compiler's memory figures are not the TPU's.
`--cpu` asks for that explicitly.

The config's mesh must cover the topology's chips (`--config.mesh.fsdp=-1` takes them
all). The global batch is `config.data.batch_size`: per chip, batch_size / chips.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GiB = 2**30


def parser():
    from align_jax import cli

    p = cli.ArgumentParser(prog="python tools/plan.py", description=__doc__.splitlines()[0])
    cli.add_config_flag(p)
    p.add_argument("--topology", required=True, help="e.g. v5p-64, v5e-16, v4-32, v5p:2x4x4")
    p.add_argument("--cpu", action="store_true", help="compile for simulated CPU devices")
    p.add_argument("--json", default=None, help="also write the plan to this JSON file")
    return p


def main(argv=None) -> int:
    from align_jax import cli
    from align_jax.training import plan as plan_lib

    try:
        args, config = cli.parse_with_config(parser(), argv)
        topology = plan_lib.parse_topology(args.topology)
    except (cli.UsageError, ValueError) as e:
        return cli.report(e)
    on_tpu = not args.cpu and importlib.util.find_spec("libtpu") is not None
    if on_tpu:
        # libtpu looks for the TPU VM it runs on (metadata server, worker names) and logs
        # each failure; here it only compiles, for a topology described below. Nor does it
        # hold a TPU, so several plans may run at once (libtpu's lockfile would refuse).
        for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                           ("TPU_ACCELERATOR_TYPE", topology.slice_name),
                           ("TPU_STDERR_LOG_LEVEL", "3"), ("TPU_MIN_LOG_LEVEL", "3"),
                           ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):  # fmt: skip
            os.environ.setdefault(key, value)

    import jax

    # Before any backend starts: this machine's arrays live on CPU devices, as many as the
    # topology has chips (the mesh when libtpu is missing).
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", topology.chips)
    from align_jax import parallel
    from align_jax.training.errors import TrainingError

    try:
        devices = plan_lib.tpu_devices(topology) if on_tpu else jax.devices("cpu")
        mesh = parallel.make_mesh(config.mesh, devices)
        result = plan_lib.plan_stage(config, mesh)
    except (ValueError, TrainingError) as e:
        return cli.report(e)
    where = (
        f"TPU {topology.name} ({topology.chips} chips, libtpu's compiler)"
        if on_tpu
        else f"{topology.chips} simulated CPU devices standing in for {topology.name} "
        "(no libtpu: CPU compiler's memory figures)"
    )
    print(report(config, args, topology, mesh, result, where))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(as_json(config, args, topology, mesh, result, on_tpu), f, indent=2)
    return 0


def report(config, args, topology, mesh, result, where: str) -> str:
    # GiB, or MiB for a model too small to show in GiB.
    unit, name = (GiB, "GiB") if result.peak_bytes >= GiB else (2**20, "MiB")
    gib = lambda b: f"{b / unit:8.2f}"  # noqa: E731
    hbm = topology.hbm_bytes
    lines = [
        f"plan of {args.config} on {where}",
        f"mesh {dict(mesh.shape)}; global batch {config.data.batch_size} "
        f"({config.data.batch_size / topology.chips:g} per chip); compute {config.model.dtype}, "
        f"params {config.model.param_dtype}, remat {config.model.remat}, "
        f"attention {config.model.attention}{_kernels(result)}",
        f"resident per chip: train state {result.state_bytes / unit:.2f} {name}, "
        f"frozen models {result.frozen_bytes / unit:.2f} {name}",
        "",
        f"per chip, {name}:",
        "program       args  outputs  aliased    temps     code    total resident"
        "     peak   compile  model TFLOP  XLA TFLOP",
    ]
    for p in result.programs:
        if p.out_of_memory:
            lines.append(
                f"{p.name:<10} does not compile: XLA needs {p.temp_bytes / GiB:.2f} GiB of "
                f"temporaries per chip beside {p.resident_bytes / GiB:.2f} GiB resident "
                f"({p.compile_seconds:.1f}s)"
            )
            continue
        xla = f"{p.compiled_flops / 1e12:10.4g}" if p.compiled_flops is not None else "       n/a"
        lines.append(
            f"{p.name:<10}{gib(p.argument_bytes)} {gib(p.output_bytes)} {gib(p.alias_bytes)} "
            f"{gib(p.temp_bytes)} {gib(p.code_bytes)} {gib(p.total_bytes)} "
            f"{gib(p.resident_bytes)} {gib(p.peak_bytes)} {p.compile_seconds:8.1f}s "
            f"{p.model_flops / 1e12:12.4g} {xla}"
        )
    verdict = "fits" if result.fits(hbm) else "does NOT fit"
    at_least = "at least " if any(p.out_of_memory for p in result.programs) else ""
    lines += [
        "",
        f"peak {at_least}{result.peak_bytes / GiB:.2f} GiB per chip of {hbm / GiB:.0f} GiB HBM "
        f"({100 * result.peak_bytes / hbm:.0f}%): {verdict}",
        f"model FLOPs per step: {result.model_flops / 1e12:.4g} TFLOP "
        "(analytic; XLA's count runs each scanned layer body once)",
    ]
    return "\n".join(lines)


def _kernels(result) -> str:
    """How many Pallas TPU kernels (splash attention) each program compiled, if any."""
    counts = [f"{p.name} {p.tpu_kernels}" for p in result.programs if p.tpu_kernels]
    return f" (Pallas TPU kernels: {', '.join(counts)})" if counts else ""


def as_json(config, args, topology, mesh, result, on_tpu: bool) -> dict:
    return {
        "config": args.config,
        "topology": topology.name,
        "chips": topology.chips,
        "compiler": "tpu" if on_tpu else "cpu",
        "mesh": dict(mesh.shape),
        "global_batch": int(config.data.batch_size),
        "hbm_bytes": topology.hbm_bytes,
        "peak_bytes": result.peak_bytes,
        "fits": result.fits(topology.hbm_bytes),
        "state_bytes": result.state_bytes,
        "frozen_bytes": result.frozen_bytes,
        "model_flops": result.model_flops,
        "programs": [
            {**dataclasses.asdict(p), "total_bytes": p.total_bytes, "peak_bytes": p.peak_bytes}
            for p in result.programs
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
