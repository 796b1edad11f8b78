"""The reward-KL frontier on the demo's task: DPO against PPO (the DPO paper's Figure 2,
arXiv 2305.18290).

    python experiments/frontier.py [--demo_workdir=runs/demo --data_dir=data/tiny] \
        [--workdir=runs/frontier --dpo_betas=0.03,0.1,0.3,1.0 \
         --ppo_kl_coefs=0.03,0.1,0.3,1.0 --steps=60 --scale=1 --eval_prompts=200]

Every run starts from the demo's SFT model, for `--steps` steps (times `--scale`):

- DPO (configs/dpo/demo.py, the reward model's labelled pairs) at each β in `--dpo_betas`
  (`--config.objective.beta`);
- PPO (configs/ppo/demo.py, against the demo's reward model, value model from it) at each
  KL coefficient in `--ppo_kl_coefs` (`--config.objective.kl_coef`).

Each policy, and the SFT model itself (the frontier's origin), answers the same held-out
questions (experiments/evaluate.py): gold reward (held-out accuracy), proxy (reward-model
score), KL to the SFT model (k1, nats per completion), length. A stronger KL constraint
(larger β or coefficient) should stay closer to the SFT model; the frontier is the best
gold reward reached at each KL. Writes `<workdir>/frontier.md`, `.json` and `.png` (gold
and proxy against KL, one series per method). Running it again reuses finished runs and
evaluations.
"""

from __future__ import annotations

import sys

import sweep

NAME = "frontier"
COLUMNS = (
    ("method", "method", ""), ("coefficient", "coefficient", ""), ("gold", "gold", ".3f"),
    ("proxy", "proxy", "+.3f"), ("kl", "KL to SFT (nats)", ".3f"), ("length", "length", ".1f"),
    ("status", "run", ""),
)  # fmt: skip
# (method, the flag of its coefficients, config, the coefficient's key, uses the reward model)
METHODS = (
    ("DPO", "dpo_betas", "dpo/demo.py", "objective.beta", False),
    ("PPO", "ppo_kl_coefs", "ppo/demo.py", "objective.kl_coef", True),
)


def parse_args(argv=None):
    p = sweep.parser(f"experiments/{NAME}.py", __doc__, f"runs/{NAME}")
    p.add_argument("--dpo_betas", default="0.03,0.1,0.3,1.0", help="DPO's β, one run each")
    p.add_argument(
        "--ppo_kl_coefs", default="0.03,0.1,0.3,1.0", help="PPO's KL coefficients, one run each"
    )
    p.add_argument("--steps", type=int, default=60, help="steps of every run (times --scale)")
    args = sweep.parse(p, argv)
    args.dpo_betas = sweep.floats(args.dpo_betas, "--dpo_betas")
    args.ppo_kl_coefs = sweep.floats(args.ppo_kl_coefs, "--ppo_kl_coefs")
    if args.steps < 1:
        raise sweep.UsageError(f"--steps={args.steps}: expected at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    s = sweep.Sweep(args, NAME)
    total = sweep.steps(args.steps, args.scale)
    runs = []  # (method, coefficient, run name, exit status)
    for method, flag, config, key, uses_reward_model in METHODS:
        for c in getattr(args, flag):
            name = f"{method.lower()}_{key.split('.')[-1]}={c:g}"
            overrides = [f"--config.{key}={c}"]
            if uses_reward_model:
                overrides.append(f"--config.rewards.reward_model={args.reward}")
            runs.append((method, c, name, s.train(name, config, total, overrides)))

    rows = [{"method": "SFT", "coefficient": None, "run": args.sft, **s.evaluate(args.sft)}]
    for method, c, name, code in runs:
        row = {"method": method, "coefficient": f"{c:g}", "run": s.run_dir(name)}
        if code:
            row["status"] = f"failed (exit {code})"
        else:
            row.update(s.evaluate(s.run_dir(name)))
            row["wall_s"] = s.wall_times.get(name)
        rows.append(row)
    s.write(sweep.markdown(COLUMNS, rows), rows)
    print(f"plot: {plot(rows, args.workdir)}")
    return 1 if any(code for *_, code in runs) else 0


def plot(rows: list[dict], out_dir: str) -> str:
    plt = sweep.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = (("gold", "gold reward (held-out accuracy)"), ("proxy", "proxy (reward-model score)"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for method, marker, label in (
            ("SFT", "*", "SFT"),
            ("DPO", "o", "DPO (β)"),
            ("PPO", "s", "PPO (KL coefficient)"),
        ):
            points = [r for r in rows if r["method"] == method and key in r]
            ax.plot(
                [r["kl"] for r in points],
                [r[key] for r in points],
                marker,
                markersize=9 if marker == "*" else 6,
                label=label,
            )
            for r in points:
                if r["coefficient"] is not None:
                    ax.annotate(
                        r["coefficient"],
                        (r["kl"], r[key]),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        ax.set_title(title)
        ax.set_xlabel("KL to the SFT model (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return sweep.save_figure(fig, out_dir, NAME)


if __name__ == "__main__":
    sys.exit(sweep.run_main(main))
