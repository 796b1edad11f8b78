"""What the experiment commands share (overoptimization.py, frontier.py, ablate_grpo.py).

Each starts from a finished demo run (`experiments/demo.py`: its `sft` and `reward` runs under
`--demo_workdir`, its data under `--data_dir`), trains its own runs into `--workdir` and
evaluates them on the demo's held-out questions against the SFT model:

- `parser(...)` / `parse(...)`: the shared flags (`--demo_workdir`, `--data_dir`,
  `--workdir`, `--scale`, `--eval_prompts`) and the checks that make bad input one line;
  `floats`, `ints`, `choices` read the comma-list flags.
- `Sweep.train(...)`: one stage through `python -m align_jax.train` (a subprocess, as
  demo.py's `run_stage`), skipped when the run's metrics.jsonl already reached total_steps;
  an existing run trained with other values of the same overrides is an error, not reused.
  Its wall time is kept in `<workdir>/wall_times.json` for the tables of later runs.
- `Sweep.evaluate(...)`: `experiments/evaluate.py` on one checkpoint (held-out gold, proxy,
  KL to the SFT model, length), cached in `<workdir>/evals.json` by run, step, checkpoint
  time and prompt count, so running a command again evaluates only what is new.
- `markdown(...)`, `Sweep.write(...)`: the table and its `.md` / `.json` files.
- `run_main(main)`: bad input (`cli.UsageError`) and unreadable runs as `error: ...` in one
  line on stderr (exit status 2), never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(REPO, "experiments") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "experiments"))  # evaluate, tiny_corpus

from align_jax import cli  # noqa: E402
from align_jax.checkpoint import CheckpointError  # noqa: E402

UsageError = cli.UsageError
MAX_NEW_TOKENS = 16  # the demo's held-out evaluation of the SFT-derived policies


# ----------------------------------------------------------------------------- flags


def parser(prog: str, doc: str, workdir: str) -> cli.ArgumentParser:
    """The shared flags; `workdir` is the default output folder under the repository."""
    p = cli.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument(
        "--demo_workdir",
        default=os.path.join(REPO, "runs/demo"),
        help="the finished demo run whose sft/ and reward/ runs everything starts "
        "from (default: runs/demo)",
    )
    p.add_argument(
        "--data_dir",
        default=os.path.join(REPO, "data/tiny"),
        help="the demo's data folder (default: data/tiny)",
    )
    p.add_argument(
        "--workdir",
        default=os.path.join(REPO, workdir),
        help=f"this experiment's runs and results (default: {workdir})",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies every run's step count (0.1 for a quick check)",
    )
    p.add_argument(
        "--eval_prompts",
        type=int,
        default=200,
        help="held-out questions each policy answers (2 samples each)",
    )
    return p


def parse(p: cli.ArgumentParser, argv=None):
    """The parsed flags, paths made absolute; UsageError naming the flag on bad values or a
    demo run that is missing."""
    args = p.parse_args(argv)
    if not args.scale > 0:
        raise UsageError(f"--scale={args.scale}: expected a positive number")
    if args.eval_prompts < 1:
        raise UsageError(f"--eval_prompts={args.eval_prompts}: expected at least 1")
    for flag in ("demo_workdir", "data_dir", "workdir"):
        setattr(args, flag, os.path.abspath(getattr(args, flag)))
    for name in ("sft", "reward"):
        run = os.path.join(args.demo_workdir, name)
        if not os.path.isfile(os.path.join(run, "config.json")) or not checkpoint_steps(run):
            raise UsageError(
                f"--demo_workdir: {run} is not a finished run (no config.json or checkpoint); "
                "run experiments/demo.py first"
            )
    for name in ("rl_train.jsonl", "rl_eval.jsonl", "tok.model"):
        if not os.path.isfile(os.path.join(args.data_dir, name)):
            raise UsageError(
                f"--data_dir: {args.data_dir} has no {name} (experiments/demo.py writes it)"
            )
    args.sft = os.path.join(args.demo_workdir, "sft")
    args.reward = os.path.join(args.demo_workdir, "reward")
    return args


def _items(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if len(set(items)) != len(items):
        raise UsageError(f"{flag}={text}: a value appears twice")
    return items


def _numbers(text: str, flag: str, convert, ok, expected: str) -> list:
    """A comma list of `convert`ed values, each passing `ok`; a one-line error otherwise."""
    try:
        values = [convert(t) for t in _items(text, flag)]
    except ValueError:
        values = []
    if not values or not all(ok(v) for v in values):
        raise UsageError(f"{flag}={text}: expected {expected}")
    return values


def floats(text: str, flag: str) -> list[float]:
    """A comma list of positive numbers."""
    return _numbers(text, flag, float, lambda v: v > 0, "positive numbers, e.g. 0.1,0.3")


def ints(text: str, flag: str) -> list[int]:
    """A comma list of integers >= 1."""
    return _numbers(text, flag, int, lambda v: v >= 1, "integers >= 1, e.g. 1,4,16")


def choices(text: str, flag: str, valid) -> list[str]:
    """A comma list of names from `valid` (possibly empty)."""
    values = _items(text, flag)
    for v in values:
        if v not in valid:
            raise UsageError(f"{flag}: unknown value {v!r}; expected some of {','.join(valid)}")
    return values


def steps(n: int, scale: float) -> int:
    """A run's step count at `--scale` (as demo.py scales its stages)."""
    return max(2, round(n * scale))


# ----------------------------------------------------------------------------- runs


def read_metrics(run: str) -> list[dict]:
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_steps(run: str) -> list[int]:
    """The run's saved checkpoint steps, in order."""
    folder = os.path.join(run, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(
        int(s) for s in os.listdir(folder) if s.isdigit() and os.path.isdir(f"{folder}/{s}/state")
    )


def finished(run: str, total_steps: int) -> bool:
    """The run logged step `total_steps` and saved a checkpoint there; UsageError when it
    went further (trained at a larger `--scale`)."""
    logged = [r["step"] for r in read_metrics(run) if "loss" in r]
    saved = checkpoint_steps(run)
    if logged and max(logged) > total_steps:
        raise UsageError(
            f"--workdir: {run} ran {max(logged)} steps, more than the {total_steps} asked "
            "(another --scale?); delete it or pick another --workdir"
        )
    return bool(logged and saved) and max(logged) == total_steps and saved[-1] == total_steps


def check_same_config(run: str, overrides: list[str]) -> None:
    """UsageError when an existing run was trained with other values of the `--config.KEY=
    VALUE` overrides than these (another --kl_coef, say), which reusing or resuming it would
    silently mix in."""
    path = os.path.join(run, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f)
    for item in overrides:
        key, _, value = item.removeprefix("--config.").partition("=")
        if key == "total_steps":  # a shorter run is resumed to the new length
            continue
        have = stored
        for part in key.split("."):
            have = have.get(part) if isinstance(have, dict) else None
        same = str(have) == value
        if isinstance(have, int | float) and not isinstance(have, bool):
            try:
                same = float(have) == float(value)
            except ValueError:
                same = False
        if not same:
            raise UsageError(
                f"--workdir: {run} was trained with {key}={have}, not {value}; delete it or "
                "pick another --workdir"
            )


def final_loss(run: str) -> float | None:
    train = [r for r in read_metrics(run) if "loss" in r]
    return float(train[-1]["loss"]) if train else None


class Sweep:
    """One experiment's workdir: its training runs, evaluations and result files."""

    def __init__(self, args, name: str):
        self.args, self.name = args, name
        os.makedirs(args.workdir, exist_ok=True)
        self._times_path = os.path.join(args.workdir, "wall_times.json")
        self._evals_path = os.path.join(args.workdir, "evals.json")
        self.wall_times = _read_json(self._times_path, {})
        self._evals = _read_json(self._evals_path, {})
        self._records = None

    def run_dir(self, run: str) -> str:
        return os.path.join(self.args.workdir, run)

    def train(self, run: str, config: str, total_steps: int, overrides: list[str]) -> int:
        """Trains `<workdir>/<run>` with `configs/<config>` from the demo's SFT model (or
        reuses it when finished); returns the exit status. An interrupted run (Ctrl-C,
        SIGTERM) stops the whole command; run it again to resume."""
        workdir = self.run_dir(run)
        done = finished(workdir, total_steps)
        check_same_config(workdir, [f"--config.init_from={self.args.sft}", *overrides])
        if done:
            print(f"== {run}: finished at step {total_steps}, reused ({workdir})", flush=True)
            return 0
        cmd = [
            sys.executable,
            "-m",
            "align_jax.train",
            f"--config={os.path.join(REPO, 'configs', config)}:{self.args.data_dir}",
            f"--workdir={workdir}",
            f"--config.init_from={self.args.sft}",
            f"--config.total_steps={total_steps}",
            "--config.eval_every=0",  # held-out numbers come from evaluate.py, after training
            *overrides,
        ]
        print(f"\n== {run}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        returncode = run_to_the_end(cmd)
        wall = time.perf_counter() - t0
        self.wall_times[run] = self.wall_times.get(run, 0.0) + wall  # a resumed run adds up
        _write_json(self._times_path, self.wall_times)
        if returncode in (130, 143, -2, -15):
            print(f"== {run}: interrupted; run the same command again to resume", flush=True)
            sys.exit(returncode if returncode > 0 else 130)
        print(f"== {run}: exit {returncode} after {wall:.0f} s", flush=True)
        return returncode

    def records(self) -> list[dict]:
        if self._records is None:
            from evaluate import read_jsonl

            path = os.path.join(self.args.data_dir, "rl_eval.jsonl")
            self._records = read_jsonl(path, self.args.eval_prompts)
        return self._records

    def cached(self, key: str, fn):
        """fn()'s result, computed once per key in `<workdir>/evals.json`."""
        key = f"{key} prompts={self.args.eval_prompts}"
        if key not in self._evals:
            self._evals[key] = fn()
            _write_json(self._evals_path, self._evals, indent=None)  # a cache: compact
        return self._evals[key]

    def evaluate(self, run: str, step: int | None = None) -> dict:
        """Held-out gold, proxy, KL to the SFT model and length of a run's checkpoint (the
        latest by default); `run` is a path."""
        step = checkpoint_steps(run)[-1] if step is None else step
        stamp = os.path.getmtime(os.path.join(run, "checkpoints", str(step)))
        key = f"evaluate {run} step={step} saved={stamp:.0f}"

        def fn():
            from evaluate import evaluate

            t0 = time.perf_counter()
            result = evaluate(
                run,
                self.records(),
                reference_dir=self.args.sft,
                reward_dir=self.args.reward,
                max_new_tokens=MAX_NEW_TOKENS,
                step=step,
            )
            print(
                f"   evaluated {os.path.basename(run)} step {step}: gold {result['gold']:.3f}, "
                f"proxy {result['proxy']:+.2f}, KL {result['kl']:.2f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            return {k: v for k, v in result.items() if k != "examples"} | {"step": step}

        return self.cached(key, fn)

    def write(self, text: str, data) -> None:
        """Writes `<workdir>/<name>.md` and `<name>.json` and prints the table."""
        base = os.path.join(self.args.workdir, self.name)
        with open(base + ".md", "w") as f:
            f.write(text.rstrip("\n") + "\n")
        _write_json(base + ".json", data)
        print("\n" + text.rstrip("\n"))
        print(f"\ntable: {base}.md (and {self.name}.json)")


def run_to_the_end(cmd: list[str]) -> int:
    """Runs a command from the repository root and returns its exit status, waiting through
    Ctrl-C: the child got the same SIGINT and saves a checkpoint before it exits
    (`subprocess.run` would kill it 0.25 s later, before the save)."""
    process = subprocess.Popen(cmd, cwd=REPO)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def markdown(columns, rows: list[dict]) -> str:
    """A Markdown table: `columns` are (key, title, format); a missing value is '-', and a
    column no row has is left out."""
    columns = [c for c in columns if any(row.get(c[0]) is not None for row in rows)]
    lines = [
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir: str, name: str) -> str:
    """Writes `fig` to `out_dir/<name>.png`, closes it and returns the path."""
    path = os.path.join(out_dir, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def run_main(main, argv=None) -> int:
    """main(argv) with bad input, unreadable runs and failed runs reported in one line."""
    from align_jax.malloc import keep_freed_memory

    keep_freed_memory()  # the evaluations run jax in this process (align_jax/malloc.py)
    try:
        return main(argv)
    except (UsageError, CheckpointError) as e:
        return cli.report(e)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to go on", file=sys.stderr)
        return 130


def _read_json(path: str, default):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data, indent: int | None = 2) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent)
    os.replace(tmp, path)
