"""GRPO ablations on the demo's task: one key changed at a time from configs/grpo/demo.py.

    python experiments/ablate_grpo.py [--demo_workdir=runs/demo --data_dir=data/tiny] \
        [--workdir=runs/ablate_grpo --loss_types=grpo,bnpo,dr_grpo,dapo \
         --advantage_estimators=grpo,rloo,reinforce_pp,reinforce_pp_baseline \
         --steps=60 --scale=1 --eval_prompts=200]

Every run is the demo's GRPO (configs/grpo/demo.py: from the demo's SFT model, against its
reward model, 8 samples a prompt, k3 KL to the SFT model at β 0.1) for `--steps` steps
(times `--scale`), with one key changed: `objective.loss_type` (how token losses are
averaged: per sequence, per batch token, by a constant, per token over the batch) to each of
`--loss_types`, or `objective.advantage_estimator` (group-scaled, leave-one-out,
REINFORCE++ with or without a group baseline) to each of `--advantage_estimators`. A value
equal to the base config's is the base run itself, run once. An empty list leaves that key
alone.

Each policy answers the same held-out questions (experiments/evaluate.py). The table
(`<workdir>/ablate_grpo.md`, `.json`): variant, held-out gold reward, proxy (reward-model
score), KL to the SFT model, length, final train loss, wall time of the training run (as
measured when it ran; reused runs keep theirs), with the SFT model's row first for
comparison. `<workdir>/ablate_grpo.png`: gold, proxy and KL per variant (SFT in grey).
Running it again reuses finished runs and evaluations.
"""

from __future__ import annotations

import os
import sys

import sweep

NAME = "ablate_grpo"
CONFIG = "grpo/demo.py"
COLUMNS = (
    ("variant", "variant", ""), ("gold", "gold", ".3f"), ("proxy", "proxy", "+.3f"),
    ("kl", "KL to SFT (nats)", ".3f"), ("length", "length", ".1f"),
    ("train_loss", "final train loss", ".4g"), ("wall_s", "wall time (s)", ".0f"),
    ("status", "run", ""),
)  # fmt: skip


def parse_args(argv=None):
    from align_jax.losses import GRPO_LOSS_TYPES
    from align_jax.objectives.grpo import ADVANTAGE_ESTIMATORS

    p = sweep.parser(f"experiments/{NAME}.py", __doc__, f"runs/{NAME}")
    p.add_argument(
        "--loss_types",
        default=",".join(GRPO_LOSS_TYPES),
        help=f"objective.loss_type values, of {','.join(GRPO_LOSS_TYPES)}",
    )
    p.add_argument(
        "--advantage_estimators",
        default=",".join(ADVANTAGE_ESTIMATORS),
        help=f"objective.advantage_estimator values, of {','.join(ADVANTAGE_ESTIMATORS)}",
    )
    p.add_argument("--steps", type=int, default=60, help="steps of every run (times --scale)")
    args = sweep.parse(p, argv)
    args.variants = {
        "loss_type": sweep.choices(args.loss_types, "--loss_types", GRPO_LOSS_TYPES),
        "advantage_estimator": sweep.choices(
            args.advantage_estimators, "--advantage_estimators", ADVANTAGE_ESTIMATORS
        ),
    }
    if not any(args.variants.values()):
        raise sweep.UsageError("--loss_types and --advantage_estimators are both empty")
    if args.steps < 1:
        raise sweep.UsageError(f"--steps={args.steps}: expected at least 1")
    return args


def variants(args) -> list[tuple[str, str, list[str]]]:
    """(label, run name, overrides) of each distinct run, the base config's first."""
    from align_jax import cli

    base = cli.load_config(f"{os.path.join(sweep.REPO, 'configs', CONFIG)}:{args.data_dir}")
    base_values = {key: base.objective[key] for key in args.variants}
    label = ", ".join(f"{k}={v}" for k, v in base_values.items())
    out = [(f"base ({label})", "base", [])]
    for key, values in args.variants.items():
        for value in values:
            if value != base_values[key]:
                name = f"{key}={value}"
                out.append((name, name, [f"--config.objective.{key}={value}"]))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    s = sweep.Sweep(args, NAME)
    total = sweep.steps(args.steps, args.scale)
    reward = f"--config.rewards.reward_model={args.reward}"
    runs = [
        (label, name, s.train(name, CONFIG, total, [reward, *overrides]))
        for label, name, overrides in variants(args)
    ]
    rows = [{"variant": "SFT (the start)", "run": args.sft, **s.evaluate(args.sft)}]
    for label, name, code in runs:
        run = s.run_dir(name)
        row = {
            "variant": label,
            "run": run,
            "train_loss": sweep.final_loss(run),
            "wall_s": s.wall_times.get(name),
        }
        if code:
            row["status"] = f"failed (exit {code})"
        else:
            row.update(s.evaluate(run))
        rows.append(row)
    s.write(sweep.markdown(COLUMNS, rows), rows)
    print(f"plot: {plot(rows, args.workdir)}")
    return 1 if any(code for *_, code in runs) else 0


def plot(rows: list[dict], out_dir: str) -> str:
    plt = sweep.pyplot()
    rows = [r for r in rows if "gold" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(rows) + 1.8))
    labels = [r["variant"] for r in rows]
    panels = (
        ("gold", "gold reward (held-out accuracy)"),
        ("proxy", "proxy (reward-model score)"),
        ("kl", "KL to the SFT model (nats)"),
    )
    for i, (ax, (key, title)) in enumerate(zip(axes, panels, strict=True)):
        colors = ["0.6" if r["run"] == rows[0]["run"] else f"C{i}" for r in rows]  # SFT: grey
        ax.barh(range(len(rows)), [r[key] for r in rows], color=colors)
        ax.set_yticks(range(len(rows)), labels if i == 0 else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    return sweep.save_figure(fig, out_dir, NAME)


if __name__ == "__main__":
    sys.exit(sweep.run_main(main))
