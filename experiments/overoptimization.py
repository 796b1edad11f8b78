"""Reward-model over-optimisation on the demo's task (Gao et al., arXiv 2210.10760).

    python experiments/overoptimization.py [--demo_workdir=runs/demo --data_dir=data/tiny] \
        [--workdir=runs/overoptimization --ns=1,2,4,8,16,32,64 --kl_coef=0.02 \
         --ppo_steps=60 --checkpoint_every=0 --scale=1 --eval_prompts=200]

The demo's reward model is a proxy for the gold reward (`tiny_corpus.answer_reward`). As a
policy moves away from the SFT model to please the proxy, the proxy score keeps rising while
the gold reward first rises and then falls. Two ways of moving away, each measured against
d = sqrt(KL to the SFT model):

- best-of-n from the SFT model, n in `--ns`: every held-out question gets max(n) samples at
  temperature 1, drawn once; for each n the first n of them are scored by the reward model
  and the highest-scored one is kept (the first on a tie). KL is the analytic
  ln n - (n - 1) / n.
- PPO (configs/ppo/demo.py from the demo's SFT model against its reward model) with a small
  KL coefficient (`--kl_coef`), so it drifts, saving a checkpoint every `--checkpoint_every`
  steps (0: a tenth of the run) and keeping them all. Every checkpoint, and the SFT model
  as step 0, is evaluated by experiments/evaluate.py: measured KL (k1), gold, proxy.

The gold reward's change R(d) = gold(d) - gold(0) is fitted with the paper's forms,
best-of-n R = d (alpha - beta d) and RL R = d (alpha - beta ln d), by least squares
(experiments/overopt_fits.py). Writes `<workdir>/overoptimization.md` (the points and the
fits), `.json` and `.png` (gold and proxy against d, both methods, fitted gold curves as
lines). Running it again reuses the finished PPO run and every evaluation done before.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import sweep
from overopt_fits import bon_curve, bon_kl, fit_bon, fit_rl, rl_curve

NAME = "overoptimization"
COLUMNS = (
    ("method", "method", ""), ("x", "n / step", ""), ("kl", "KL to SFT (nats)", ".3f"),
    ("d", "d = sqrt(KL)", ".3f"), ("gold", "gold", ".3f"), ("proxy", "proxy", "+.3f"),
    ("gold_fit", "fitted gold", ".3f"),
)  # fmt: skip


def parse_args(argv=None):
    p = sweep.parser(f"experiments/{NAME}.py", __doc__, f"runs/{NAME}")
    p.add_argument(
        "--ns",
        default="1,2,4,8,16,32,64",
        help="best-of-n sizes (1, the SFT model's own samples, is always added)",
    )
    p.add_argument("--kl_coef", type=float, default=0.02, help="PPO's KL coefficient")
    p.add_argument("--ppo_steps", type=int, default=60, help="PPO steps (times --scale)")
    p.add_argument(
        "--checkpoint_every",
        type=int,
        default=0,
        help="PPO steps between evaluated checkpoints (0: a tenth of the run)",
    )
    args = sweep.parse(p, argv)
    args.ns = sorted(set(sweep.ints(args.ns, "--ns")) | {1})
    if args.kl_coef < 0:
        raise sweep.UsageError(f"--kl_coef={args.kl_coef}: expected a number >= 0")
    if args.ppo_steps < 1 or args.checkpoint_every < 0:
        raise sweep.UsageError("--ppo_steps must be >= 1 and --checkpoint_every >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    s = sweep.Sweep(args, NAME)
    ppo = train_ppo(s)
    if ppo is None:
        return 1
    bon = best_of_n_points(s)
    rl = [rl_point(s.evaluate(args.sft), 0)] + [
        rl_point(s.evaluate(ppo, step), step) for step in sweep.checkpoint_steps(ppo)
    ]
    fits = {"best-of-n": fit(bon, fit_bon, bon_curve), "PPO": fit(rl, fit_rl, rl_curve)}
    s.write(report(bon + rl, fits), {"rows": bon + rl, "fits": fits})
    print(f"plot: {plot(bon, rl, fits, args.workdir)}")
    return 0


def train_ppo(s: sweep.Sweep) -> str | None:
    """The drifting PPO run's workdir (None if it failed)."""
    args = s.args
    total = sweep.steps(args.ppo_steps, args.scale)
    every = args.checkpoint_every or max(1, round(total / 10))
    code = s.train(
        "ppo",
        "ppo/demo.py",
        total,
        [
            f"--config.rewards.reward_model={args.reward}",
            f"--config.objective.kl_coef={args.kl_coef}",
            f"--config.checkpoint_every={every}",
            f"--config.keep_checkpoints={total // every + 2}",  # keep every one
        ],
    )
    if code:
        print(f"error: the PPO run failed (exit {code}); its log is above", file=sys.stderr)
        return None
    return s.run_dir("ppo")


def best_of_n_points(s: sweep.Sweep) -> list[dict]:
    """One row per n: the kept samples' mean gold and proxy, the analytic KL."""
    args = s.args
    n_max = args.ns[-1]
    sft, reward = (sweep.checkpoint_steps(r)[-1] for r in (args.sft, args.reward))
    key = f"best-of-n samples {args.sft}@{sft} {args.reward}@{reward} n={n_max}"
    samples = s.cached(key, lambda: sample_and_score(s, n_max))
    gold, proxy = np.array(samples["gold"]), np.array(samples["proxy"])
    rows = []
    for n in args.ns:
        best = best_of_first(proxy, n)
        rows.append(
            {
                "method": "best-of-n",
                "x": n,
                "n": n,
                "kl": bon_kl(n),
                "d": math.sqrt(bon_kl(n)),
                "gold": float(gold[np.arange(len(best)), best].mean()),
                "proxy": float(proxy[np.arange(len(best)), best].mean()),
            }
        )
    return rows


def best_of_first(proxy: np.ndarray, n: int) -> np.ndarray:
    """Per prompt, the index of the highest-scored of its first n samples (align_jax's
    `generate.best_of`: the first on a tie)."""
    from align_jax.generate import best_of

    rows = [{"score": float(x), "i": i} for scores in proxy[:, :n] for i, x in enumerate(scores)]
    return np.array([r["i"] for r in best_of(rows, n)])


def sample_and_score(s: sweep.Sweep, n: int) -> dict:
    """n samples of every held-out question from the SFT model at temperature 1 (the
    sampler align_jax.generate uses), with their gold rewards and reward-model scores:
    {"gold": [prompts][n], "proxy": [prompts][n]}."""
    import time

    from tiny_corpus import answer_reward

    from align_jax import loading, parallel
    from align_jax.data.tokenizer import Tokenizer
    from align_jax.rollout import Sampler, SamplingParams
    from align_jax.score import RewardScorer

    t0 = time.perf_counter()
    records = s.records()
    mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    config, graphdef, params, _ = loading.load_run(s.args.sft, mesh=mesh)
    tok = Tokenizer.load(config.data.tokenizer)
    sampler = Sampler(graphdef, mesh, config.sharding.rules, eos_id=tok.eos_id, pad_id=tok.pad_id)
    sp = SamplingParams(sweep.MAX_NEW_TOKENS, 1.0, 0, 1.0, n)
    bos = [tok.bos_id] * bool(config.data.add_bos)
    prompts = [bos + tok.encode(r["prompt"]) for r in records]
    per_call = min(len(prompts), max(1, 512 // n))  # about 512 rows a call
    prompt_len = -(-max(map(len, prompts)) // 8) * 8
    completions = []
    for lo in range(0, len(prompts), per_call):
        chunk = prompts[lo : lo + per_call]
        chunk += [chunk[-1]] * (per_call - len(chunk))  # one shape, one compile
        out = sampler.generate(params, chunk, sp, seed=lo, prompt_len=prompt_len)
        for row, i in enumerate(out["prompt_index"]):
            if lo + i < len(prompts):
                ids = out["tokens"][row][: int(out["mask"][row].sum())].tolist()
                completions.append(tok.decode(ids[:-1] if ids and ids[-1] == tok.eos_id else ids))
    texts = [r["prompt"] for r in records for _ in range(n)]
    answers = [r["answer"] for r in records for _ in range(n)]
    gold = np.array(answer_reward(texts, completions, answers), np.float64)
    proxy = RewardScorer.load(s.args.reward, batch_size=256).score(texts, completions)
    print(f"   best-of-{n}: {len(completions)} samples scored ({time.perf_counter() - t0:.0f} s)")
    shape = (len(records), n)
    return {"gold": gold.reshape(shape).tolist(), "proxy": np.reshape(proxy, shape).tolist()}


def rl_point(result: dict, step: int) -> dict:
    kl = result["kl"]
    return {
        "method": "PPO",
        "x": step,
        "step": step,
        "kl": kl,
        "d": math.sqrt(max(kl, 0.0)),
        "gold": result["gold"],
        "proxy": result["proxy"],
        "length": result["length"],
    }


def fit(rows: list[dict], fit_fn, curve_fn) -> dict:
    """The form's (alpha, beta) fitted to R(d) = gold(d) - gold(0) (gold(0): the first row,
    best-of-1 or the SFT model), and each row's fitted gold."""
    gold0 = rows[0]["gold"]
    d = np.array([r["d"] for r in rows])
    alpha, beta = fit_fn(d, np.array([r["gold"] for r in rows]) - gold0)
    for r, g in zip(rows, gold0 + curve_fn(d, alpha, beta), strict=True):
        r["gold_fit"] = None if math.isnan(g) else float(g)
    return {"alpha": alpha, "beta": beta, "gold0": gold0}


def report(rows: list[dict], fits: dict) -> str:
    forms = {"best-of-n": "R = d (α − β d)", "PPO": "R = d (α − β ln d)"}
    lines = ["| method | form | α | β | gold(0) |", "|---|---|---|---|---|"]
    for method, f in fits.items():
        lines.append(
            f"| {method} | {forms[method]} | {f['alpha']:.4f} | {f['beta']:.4f} "
            f"| {f['gold0']:.3f} |"
        )
    return (
        sweep.markdown(COLUMNS, rows)
        + "\nFits, R(d) = gold(d) − gold(0):\n\n"
        + ("\n".join(lines) + "\n")
    )


def plot(bon: list[dict], rl: list[dict], fits: dict, out_dir: str) -> str:
    plt = sweep.pyplot()
    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(10, 3.8))
    d_max = max(r["d"] for r in bon + rl) * 1.05 or 1.0
    grid = np.linspace(0, d_max, 200)
    for rows, method, curve_fn, color in (
        (bon, "best-of-n", bon_curve, "C0"),
        (rl, "PPO", rl_curve, "C1"),
    ):
        d = [r["d"] for r in rows]
        f = fits[method]
        ax_gold.plot(d, [r["gold"] for r in rows], "o", color=color, label=f"{method} gold")
        if not math.isnan(f["alpha"]):
            ax_gold.plot(
                grid,
                f["gold0"] + curve_fn(grid, f["alpha"], f["beta"]),
                "-",
                color=color,
                label=f"{method} fit (α {f['alpha']:.3f}, β {f['beta']:.3f})",
            )
        ax_proxy.plot(d, [r["proxy"] for r in rows], "o--", color=color, label=method)
    for ax, title in (
        (ax_gold, "gold reward (held-out accuracy)"),
        (ax_proxy, "proxy (reward-model score)"),
    ):
        ax.set_title(title)
        ax.set_xlabel("d = sqrt(KL to SFT), sqrt(nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return sweep.save_figure(fig, out_dir, NAME)


if __name__ == "__main__":
    sys.exit(sweep.run_main(main))
