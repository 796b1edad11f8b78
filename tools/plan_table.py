"""The "what fits where" table of docs/scale.md: tools/plan.py over a grid of configs,
topologies and global batches, one subprocess each, printed as markdown rows.

    python tools/plan_table.py [--only=sft/llama3_8b] [--json_dir=plans/]

Needs libtpu (the `tpu` extra) for TPU figures; without it every row says it was planned on
simulated CPU devices. On a 2-core, 24 GiB host the 8B SFT step compiled in 75 s, a program
the compiler refuses fails in seconds, the 8B DPO step on v5p-16 ran out of host RAM, and
the 8B GRPO stage on v5p-64 ran past 20 minutes: `--only` picks rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30

# (config under configs/, topology, global batch or None for the config's own)
GRID = [
    ("sft/llama3_8b", "v5e-16", None),
    ("sft/llama3_8b", "v5p-16", None),
    ("sft/llama3_8b", "v5p-64", None),
    ("dpo/llama3_8b", "v5e-16", None),
    ("dpo/llama3_8b", "v5p-16", None),
    ("grpo/llama3_8b", "v5p-16", None),
    ("grpo/llama3_8b", "v5p-64", None),
    ("ppo/llama3_8b", "v5p-32", None),
    ("ppo/llama3_8b", "v5p-64", None),
    ("sft/llama3_70b", "v5p-128", None),
    ("sft/llama3_70b", "v5p-256", None),
    ("dpo/llama3_70b", "v5p-128", None),
    ("grpo/llama3_70b", "v5p-256", None),
    ("ppo/llama3_70b", "v5p-256", None),
]


def plan(config: str, topology: str, batch: int | None, json_dir: str) -> dict:
    out = os.path.join(json_dir, f"{config.replace('/', '_')}_{topology}_{batch or 0}.json")
    cmd = [sys.executable, os.path.join(REPO, "tools", "plan.py"),
           f"--config={os.path.join(REPO, 'configs', config)}.py", f"--topology={topology}",
           f"--json={out}"]  # fmt: skip
    if batch:
        cmd.append(f"--config.data.batch_size={batch}")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode < 0:  # the OS killed the compiler: usually this host's memory
        why = f"killed by signal {-done.returncode} while compiling (this host's RAM?)"
        return {"config": config, "topology": topology, "error": why}
    if done.returncode:
        return {"config": config, "topology": topology, "error": done.stderr.strip()[-300:]}
    with open(out) as f:
        return json.load(f)


def row(p: dict) -> str:
    if "error" in p:
        return f"| {p['config']} | {p['topology']} | | | failed: {p['error']} | |"
    chips, batch = p["chips"], p["global_batch"]
    compile_s = sum(q["compile_seconds"] for q in p["programs"])
    where = "" if p["compiler"] == "tpu" else " (CPU compiler)"
    oom = any(q["out_of_memory"] for q in p["programs"])
    peak = f"{'> ' if oom else ''}{p['peak_bytes'] / GiB:.1f} GiB"
    return (
        f"| {os.path.basename(os.path.dirname(p['config']))}/"
        f"{os.path.basename(p['config']).removesuffix('.py')} | {p['topology']} "
        f"({chips} chips, {p['hbm_bytes'] / GiB:.0f} GiB){where} | {batch} ({batch / chips:g}) | "
        f"{peak} | {'yes' if p['fits'] else 'no'} | {compile_s:.0f} s |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated configs, e.g. sft/llama3_8b")
    ap.add_argument("--json_dir", default=None, help="keep each plan's JSON here")
    args = ap.parse_args()
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    json_dir = args.json_dir or tempfile.mkdtemp(prefix="plans_")
    os.makedirs(json_dir, exist_ok=True)
    print("| config | topology | global batch (per chip) | peak per chip | fits | compile |")
    print("|---|---|---|---|---|---|")
    for config, topology, batch in GRID:
        if only and config not in only:
            continue
        print(row(plan(config, topology, batch, json_dir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
