"""An ablation in one command: one DPO config over several loss types, one comparison table.

    python tools/ablate_dpo.py --config=configs/dpo/tiny.py --init_from=runs/sft_tiny \
        --loss_types=sigmoid,ipo,hinge,robust --workdir=runs/ablate \
        [--set objective.beta=0.2 --set total_steps=100 ...]

Each loss type runs through the real CLI (`python -m align_jax.train`, one subprocess each,
one after the other) in `WORKDIR/<loss type>`, with `--config.objective.loss_type=<type>`,
`--config.init_from=INIT_FROM` and every `--set key=value` as `--config.key=value`. A
combination is written with `+` (`sigmoid+sft`, weights from `--set
objective.loss_weights=...`). Running the command again resumes or reuses finished runs.

From each run's `metrics.jsonl` it writes `WORKDIR/ablation.md` (a markdown table: loss type,
final train loss, held-out reward accuracy, reward margin, kl_ref, tokens/s, wall time) and
`WORKDIR/ablation.json` (the same rows, plus each run's command and exit status), and prints
the table. Held-out columns read the last eval record (`config.eval_every` > 0 and eval files
are needed); tokens/s is the median of the logged train records after the first (which
includes compilation). A failed run is reported in the table and the exit status is 1.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from align_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLUMNS = (
    ("loss_type", "loss type"),
    ("train_loss", "final train loss"),
    ("eval_reward_accuracy", "held-out reward accuracy"),
    ("eval_reward_margin", "held-out margin"),
    ("eval_kl_ref", "held-out kl_ref"),
    ("tokens_per_sec", "tokens/s"),
    ("wall_s", "wall time (s)"),
)


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="tools/ablate_dpo.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="config file[:arg], as for align_jax.train")
    p.add_argument("--init_from", default="", help="policy and reference checkpoint (SFT run)")
    p.add_argument("--loss_types", required=True, help="comma list; '+' joins a combination")
    p.add_argument("--workdir", required=True, help="one subdirectory per loss type, and tables")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run (repeatable), e.g. objective.beta=0.2",
    )
    args = p.parse_args(argv)
    args.loss_types = [t.strip() for t in args.loss_types.split(",") if t.strip()]
    if not args.loss_types:
        p.error("--loss_types is empty; expected e.g. sigmoid,ipo")
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r}; expected KEY=VALUE, e.g. objective.beta=0.2")
    return args


def check_config(args) -> None:
    """Loads the config and applies every override as each run's command line will, so a
    missing file or a mistyped key fails once, here, before any run starts."""
    config = cli.load_config(args.config)
    for item in args.set:
        key, _, value = item.partition("=")
        cli.set_override(config, key, value, flag=f"--set {key}")
    for loss_type in args.loss_types:
        cli.set_override(
            config, "objective.loss_type", loss_type.replace("+", ","), flag="--loss_types"
        )


def command(args, loss_type: str, workdir: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "align_jax.train",
        f"--config={args.config}",
        f"--workdir={workdir}",
        f"--config.objective.loss_type={loss_type.replace('+', ',')}",
    ]
    if args.init_from:
        cmd.append(f"--config.init_from={os.path.abspath(args.init_from)}")
    cmd += [f"--config.{item}" for item in args.set]
    return cmd


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(records: list[dict]) -> dict:
    """Final train loss, the last eval record's metrics, median train tokens/s."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    out: dict = {}
    if train:
        out["train_loss"] = train[-1]["loss"]
        out["steps"] = train[-1]["step"]
        speeds = [r["tokens_per_sec"] for r in train[1:] if "tokens_per_sec" in r]
        speeds = speeds or [r["tokens_per_sec"] for r in train if "tokens_per_sec" in r]
        if speeds:
            out["tokens_per_sec"] = statistics.median(speeds)
    if evals:
        for key, value in evals[-1].items():
            if key.startswith("eval_"):
                out[key] = value
    return out


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        cells = [_cell(row.get(key)) for key, _ in COLUMNS]
        if row.get("returncode"):
            cells[0] += f" (failed: exit {row['returncode']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _env() -> dict:
    # Paths stay relative to the caller's directory; align_jax is importable from here even
    # without an install.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def run(args) -> list[dict]:
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for loss_type in args.loss_types:
        workdir = os.path.join(args.workdir, loss_type)
        cmd = command(args, loss_type, workdir)
        print(f"== {loss_type}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        returncode = subprocess.run(cmd, env=_env()).returncode
        wall = time.perf_counter() - start
        row = {"loss_type": loss_type, "wall_s": wall, "returncode": returncode, "command": cmd}
        row.update(summarize(read_metrics(workdir)))
        rows.append(row)
    return rows


def write_outputs(workdir: str, rows: list[dict]) -> str:
    table = markdown_table(rows)
    with open(os.path.join(workdir, "ablation.md"), "w") as f:
        f.write(table)
    with open(os.path.join(workdir, "ablation.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return table


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        check_config(args)
    except cli.UsageError as e:
        return cli.report(e)
    rows = run(args)
    table = write_outputs(args.workdir, rows)
    print(table, end="")
    print(f"wrote {os.path.join(args.workdir, 'ablation.md')} and ablation.json")
    return 1 if any(r["returncode"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
