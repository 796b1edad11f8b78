"""PNG plots of a stage's curves from its metrics.jsonl: loss, reward, KL.

`plot_stage(name, records, out_dir)` draws one figure per stage with up to three panels, each
showing the train and held-out (`eval_`) series the stage logged:

- loss: `loss`, `eval_loss`;
- reward: the stage's reward-like series (`reward`, `score`, `accuracy`, `reward_accuracy`,
  `reward_margin`, pass@1), train and held-out, at most four;
- KL to the reference: `kl`, `kl_ref` and their eval forms.

A panel with no series is left out.
"""

from __future__ import annotations

import os

# Each panel's series, in order of preference (the first MAX_SERIES the log has are drawn).
PANELS = {
    "loss": ("loss", "eval_loss"),
    "reward": (
        "reward", "eval_reward", "score", "eval_score", "accuracy", "eval_accuracy",
        "reward_accuracy", "eval_reward_accuracy", "reward_margin", "eval_reward_margin",
        "eval_pass_at_1",
    ),
    "KL to the reference (nats)": ("kl", "eval_kl", "kl_ref", "eval_kl_ref"),
}  # fmt: skip
MAX_SERIES = 4


def series(records: list[dict], panel: str) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} of the series `panel` draws."""
    logged = {key for r in records for key in r}
    keys = [k for k in PANELS[panel] if k in logged][:MAX_SERIES]
    return {
        key: (
            [r["step"] for r in records if key in r],
            [float(r[key]) for r in records if key in r],
        )
        for key in keys
    }


def plot_stage(name: str, records: list[dict], out_dir: str) -> str:
    """Writes `out_dir/<name>.png` and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, series(records, p)) for p in PANELS]
    panels = [(p, s) for p, s in panels if s]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, drawn) in zip(axes[0], panels, strict=True):
        for key, (steps, values) in drawn.items():
            style = "o--" if key.startswith("eval_") else "-"
            ax.plot(steps, values, style, label=key, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
