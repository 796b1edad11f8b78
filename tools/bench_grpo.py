"""Benchmark of one online GRPO step on this machine: where its time goes, and the sampler's
throughput inside the loop against the same sampler called on its own.

Prints figures; asserts nothing about timings. For each model shape (`--configs`, the shapes
of tools/bench_sample.py: `tiny` 0.5M parameters, `ref5m`, `llama25m` 26.1M; random
init, fp32, on a one-device mesh `{"data": 1, "fsdp": 1, "tensor": 1}`) it

1. writes the RL prompts of experiments/tiny_tasks.py ("what is two plus three? ") to a
   temporary directory with a word-level tokenizer padded to the model's vocabulary (why:
   `make_data`) and runs `align_jax.training.loop.train` on configs/grpo/tiny.py for
   `--steps` steps, logging every step, with the model shape swapped in and `--prompts`
   prompts × `--group` completions of `--new_tokens` tokens per step. The reward is the
   built-in `length` (characters, `length_target` 0, so the rewards of a group differ and
   the update has a gradient), in this process (`num_workers` 0): a cheap Python reward, so
   the split shows the model's parts. No eval, one synchronous checkpoint at the end, no
   sample logs.
2. reads `metrics.jsonl` and reports the median over steps 2.. (step 1 compiles) of
   - `sampling` (`time/sampling`): `Sampler.generate` only: padding the prompts, placing
     them, the jitted prefill + decode loop, fetching the outputs to numpy;
   - `rewards` (`time/rewards`): decoding the completions to text, building the training
     rows, the reward functions;
   - `prepare` (`time/reference`): the jitted no-gradient pass of objectives/grpo.py (the
     policy's log-probs of the sampled tokens, advantages; no reference model at beta = 0);
   - `update` (`time/update`): the jitted optimizer update (forward, backward, AdamW);
   their sum and shares, and `step`, the wall time between two consecutive metric records
   (the loop's log lines), so `step - sum` is what the loop spends elsewhere (putting the
   batch on the mesh, the metrics file and TensorBoard events, the finite-loss check).
   In-loop tokens/s is `generated_tokens_per_sec`: completion tokens (the sampler's mask,
   eos included) over `time/sampling`.
3. standalone: `align_jax.loading.load_run` on the run's workdir (its config and final
   parameters, on the same one-device mesh), a new `Sampler` with the run's eos / pad ids,
   the same `SamplingParams` (temperature, top-k, top-p, n = G, max_new_tokens) and padding
   (`prompt_len = config.data.max_prompt_len`), on the run's first batch of prompts (the
   train iterator of align_jax/data/prompts.py with the run's seed). Two untimed calls (the
   first compiles), then `--runs` timed calls of `Sampler.generate`, each timed exactly as
   online.py times it; tokens/s counts the mask, as the loop does. `ratio` = in-loop /
   standalone tokens/s.

Model FLOPs of the update are `train_flops_per_token(model, width) × rows × width` (every
row slot is computed, padding included); the prepare pass is a forward, a third of that.
Both are shown as GFLOP/s next to the peak of a jitted fp32 matmul measured in the same
process (tools/bench_train.py's `matmul_peak`; `--matmul_n 0` skips it).

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_grpo.py      # tiny + llama25m, 6 steps
    .venv/bin/python tools/bench_grpo.py --configs llama25m --steps 4 --runs 3
    .venv/bin/python tools/bench_grpo.py --prompts 4 --group 16 --new_tokens 64

Output: a table, then one JSON line per config, prefixed `RESULT `. (Past 400 lines: this
docstring carries the measured figures and how to read them.)

Measured on this machine (2 CPU cores, jax 0.10.2), defaults (8 prompts × G = 8 = 64 rows,
prompts of 7 tokens in 24 slots (configs/grpo/tiny.py's max_prompt_len then; 16 since),
32 new tokens, 6 steps, medians of steps 2-6, 5 standalone runs); two runs while other
processes used < 0.05 cores, ranges over the two:

    seconds (share)   sampling      rewards    prepare       update        sum      step
    tiny   (0.52M)    0.09-0.10     0.003      0.05-0.07     0.27-0.30     0.42-0.47
                      (20-24%)      (1%)       (13-15%)      (63-65%)
    llama25m (26.1M)  2.30-2.44     0.005      1.78-1.99     6.77-7.07     10.9-11.5
                      (21%)         (0%)       (16-17%)      (61-62%)

    tokens/s          in-loop       standalone    ratio
    tiny              19.7k-20.8k   19.8k-28.8k   0.72-0.99
    llama25m          840-890       850-937       0.95-0.99

The update dominates (~62%: forward + backward over 64 rows of 56 slots, 68-71 GFLOP/s
on llama25m against a 119-127 GFLOP/s matmul peak); the prepare forward costs about a
quarter of the update, the reward ~1%, the loop's own work (`step - sum`) a few %. The
sampler is as fast in the loop as alone: llama25m's ratio is 0.95-0.99, and tiny's calls
(0.1 s) vary ±20% from one to the next, which covers its spread. A run beside another
process (~1 core busy during the loop, none during the standalone runs) measured llama25m
at 0.63: compare only quiet rows (the per-step `others` figures say which).
tools/bench_sample.py on the same shapes (batch 64, prompt 24, 32 tokens, no eos):
tiny 18.1k, llama25m 891 tokens/s; of its 2.3 s llama25m call the prefill of 64 × 24
slots is 0.71 s, each decode step 41 ms.

Those figures predate the skipped prepare forward: at beta = 0 with one update per rollout,
no rollout correction and no REINFORCE++ KL, objectives/grpo.py now runs no forward in
prepare (the update's own forward gives the old log-probs), and tools/bench_ppo.py
measured GRPO's prepare at 0.4-1.5 ms (llama25m: prepare 0.000 s of a 5.2 s step, the
update 76%, on 64 rows of 16 prompt + 32 new-token slots).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = (
    ("sampling", "time/sampling"),
    ("rewards", "time/rewards"),
    ("prepare", "time/reference"),
    ("update", "time/update"),
)
ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}
QUIET = 0.2  # cores' worth of other processes' CPU below which a measurement counts as quiet


def parse_args(argv, cli, shapes):
    """The flags, checked; `cli` is align_jax.cli, `shapes` tools/bench_sample.py's CONFIGS."""
    p = cli.ArgumentParser(
        prog="tools/bench_grpo.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--configs", default="tiny,llama25m", help=f"comma-separated, from {shapes}")
    p.add_argument(
        "--steps", type=int, default=6, help="loop steps per config (the first compiles)"
    )
    p.add_argument(
        "--prompts", type=int, default=8, help="prompts per step (config.data.batch_size)"
    )
    p.add_argument("--group", type=int, default=8, help="completions per prompt (num_generations)")
    p.add_argument("--new_tokens", type=int, default=32, help="config.rollout.max_new_tokens")
    p.add_argument("--runs", type=int, default=5, help="timed standalone sampler calls")
    p.add_argument("--matmul_n", type=int, default=2048, help="side of the peak matmul (0: skip)")
    p.add_argument("--matmul_repeats", type=int, default=5)
    p.add_argument(
        "--quiet_wait",
        type=float,
        default=30.0,
        help="before the loop and before the standalone runs, wait up to this many seconds for "
        f"other processes to use under {QUIET} cores (0: don't wait)",
    )
    p.add_argument("--keep", default="", help="write the data and runs here and keep them")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(shapes))
    if unknown or not args.configs:
        raise cli.UsageError(f"--configs: unknown {unknown}; choose from {shapes}")
    for flag in ("prompts", "group", "new_tokens", "runs"):
        if getattr(args, flag) < 1:
            raise cli.UsageError(f"--{flag}={getattr(args, flag)}; expected an integer >= 1")
    if args.steps < 2:
        raise cli.UsageError(f"--steps={args.steps}; expected >= 2 (step 1 compiles)")
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        # A run directory with checkpoints would resume instead of running its steps.
        raise cli.UsageError(f"--keep={args.keep!r} is not empty; name a new or empty folder")
    return args


class StepClock(logging.Handler):
    """Records when the loop logs each step's metrics (`MetricsWriter.write` without a
    progress bar: "step <n> ..."): consecutive records bound one step's wall time, and
    what other processes used meanwhile (`CpuShare`, cores' worth). Prints one short line
    per step instead of the loop's long ones."""

    def __init__(self, CpuShare):
        super().__init__(logging.INFO)
        self.times: dict[int, float] = {}
        self.others: dict[int, float] = {}
        self._cpu_share = CpuShare
        self._start = time.perf_counter()
        self._share = CpuShare().__enter__()

    def emit(self, record):
        if not (isinstance(record.msg, str) and record.msg.startswith("step ") and record.args):
            if record.levelno >= logging.WARNING:
                print(self.format(record), file=sys.stderr, flush=True)
            return
        step, now = record.args[0], time.perf_counter()
        self._share.__exit__(None, None, None)
        self.others[step] = round(self._share.others, 2)
        self._share = self._cpu_share().__enter__()
        since = now - self.times.get(step - 1, self._start)
        self.times[step] = now
        print(f"  step {step}: {since:.2f} s (other processes {self.others[step]:.2f} cores)",
              flush=True)  # fmt: skip


def wait_quiet(max_wait: float, CpuShare) -> float:
    """Waits up to `max_wait` s, in 0.5 s looks, for other processes to use under `QUIET`
    cores; returns the last figure seen."""
    deadline = time.perf_counter() + max_wait
    while True:
        with CpuShare() as share:
            time.sleep(0.5)
        if share.others < QUIET or time.perf_counter() >= deadline:
            return round(share.others, 2)


def quiet_median(values: list[float], others: list[float]):
    """The median of the values measured while other processes used under `QUIET` cores
    (None if none was)."""
    quiet = [v for v, o in zip(values, others, strict=True) if o < QUIET]
    return statistics.median(quiet) if quiet else None


def make_data(folder: str, vocab_size: int) -> str:
    """The RL prompt files (experiments/tiny_tasks.py) in `folder` and a tokenizer of exactly
    `vocab_size` ids; returns the tokenizer's directory.

    The tokenizer is a Hugging Face word-level one: the special ids of align_jax's own
    (pad 0, bos 1, eos 2, unk 3), the prompts' words and punctuation, then `<unused_i>`
    tokens up to `vocab_size`. A randomly initialised policy samples every id of its
    vocabulary, and the loop decodes every completion: with a smaller tokenizer (the
    512-piece SentencePiece one of the tests) llama25m's ids >= 512 fail to decode."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    from tiny_tasks import write_tasks
    from tokenizers import Tokenizer, models, pre_tokenizers

    write_tasks(folder, n_train=800, n_eval=100, seed=0)
    split = pre_tokenizers.Whitespace()
    words = set()
    for name in ("rl_train.jsonl", "rl_eval.jsonl"):
        with open(os.path.join(folder, name)) as f:
            for line in f:
                words.update(w for w, _ in split.pre_tokenize_str(json.loads(line)["prompt"]))
    vocab = ["<pad>", "<s>", "</s>", "<unk>", *sorted(words)]
    if len(vocab) > vocab_size:
        raise SystemExit(f"the prompts have {len(vocab)} tokens, more than vocab {vocab_size}")
    vocab += [f"<unused_{i}>" for i in range(vocab_size - len(vocab))]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = split
    out = os.path.join(folder, f"tok{vocab_size}")
    os.makedirs(out, exist_ok=True)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f)
    return out


def make_config(name: str, data_dir: str, args, cli, model_fields, config_file="grpo/tiny.py"):
    """`configs/<config_file>` (an online objective's) with the benchmark's model shape, data,
    batch (`args.prompts` × `args.group`), reward and loop settings; tools/bench_ppo.py
    passes "ppo/tiny.py"."""
    import ml_collections

    config = cli.load_config(os.path.join(ROOT, "configs", config_file) + ":" + data_dir)
    with config.unlocked():
        config.model = ml_collections.ConfigDict(model_fields(name, "float32"))
        config.data.tokenizer = make_data(data_dir, config.model.vocab_size)
        width = config.data.max_prompt_len + args.new_tokens
        config.model.max_seq_len = max(config.model.max_seq_len, width)
        config.mesh = dict(ONE_DEVICE)
        config.data.batch_size = args.prompts
        config.objective.num_generations = args.group
        config.rollout.update(max_new_tokens=args.new_tokens, log_samples_every=0)
        config.rewards.update(
            functions="length", num_workers=0, length_target=0, length_limit=10_000
        )
        config.update(
            total_steps=args.steps, log_every=1, eval_every=0, eval_at_start=False,
            checkpoint_every=args.steps, keep_checkpoints=1, progress_bar=False,
            async_checkpointing=False,
        )  # fmt: skip
    return config


def in_loop(config, workdir: str, CpuShare) -> dict:
    """Runs the loop; the medians over steps 2.. of its time split (see the docstring)."""
    from align_jax.training import loop

    clock = StepClock(CpuShare)
    logger = logging.getLogger("align_jax")
    logger.addHandler(clock)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        start = time.perf_counter()
        with CpuShare() as share:
            loop.train(config, workdir)
        total_s = time.perf_counter() - start
    finally:
        logger.removeHandler(clock)
        logger.setLevel(level)
        logger.propagate = propagate
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = {r["step"]: r for r in map(json.loads, f) if "time/update" in r}
    steps = sorted(s for s in records if s >= 2)
    med = lambda key: statistics.median(records[s][key] for s in steps)  # noqa: E731
    out = {"loop_s": total_s, "first_step": {k: records[1][m] for k, m in PARTS}}
    out.update({k: med(m) for k, m in PARTS})
    out["sum"] = sum(out[k] for k, _ in PARTS)
    walls = [clock.times[s] - clock.times[s - 1] for s in steps if s - 1 in clock.times]
    out["step"] = statistics.median(walls) if walls else None
    out["tok_s"] = med("generated_tokens_per_sec")
    out["completion_length"] = med("completion_length")
    rates = [records[s]["generated_tokens_per_sec"] for s in steps]
    others = [clock.others.get(s, math.inf) for s in steps]
    out["tok_s_steps"] = [round(x) for x in rates]
    out["others_cores_steps"] = others
    out["tok_s_quiet"] = quiet_median(rates, others)
    out["loop_others_cores"] = round(share.others, 2)
    return out


def standalone(workdir: str, runs: int, CpuShare) -> dict:
    """The same sampler call outside the loop (see the docstring)."""
    from align_jax import loading, parallel
    from align_jax.data import prompts as prompts_data
    from align_jax.data.tokenizer import Tokenizer
    from align_jax.rollout import Sampler, SamplingParams

    config, graphdef, params, mesh = loading.load_run(workdir, mesh=parallel.make_mesh(ONE_DEVICE))
    tokenizer = Tokenizer.load(config.data.tokenizer)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    sampler = Sampler(graphdef, mesh, rules, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    r = config.rollout
    sp = SamplingParams(
        max_new_tokens=int(r.max_new_tokens), temperature=float(r.temperature),
        top_k=int(r.top_k), top_p=float(r.top_p), n=int(config.objective.num_generations),
    )  # fmt: skip
    source = prompts_data.load_source(config.data, "train", tokenizer)
    iterator = prompts_data.make_train_iterator(
        config.data, tokenizer, seed=config.seed, source=source
    )
    prompts = [p["prompt_ids"] for p in next(iterator)]
    prompt_len = prompts_data.max_prompt_len(config.data)

    def call(seed):
        t0 = time.perf_counter()
        out = sampler.generate(params, prompts, sp, seed=seed, prompt_len=prompt_len)
        return time.perf_counter() - t0, int(out["mask"].sum())

    first_s, _ = call(0)
    call(1)
    times, tokens, others = [], [], []
    for i in range(runs):
        with CpuShare() as share:
            seconds, n = call(100 + i)
        times.append(seconds)
        tokens.append(n)
        others.append(round(share.others, 2))
    rates = [n / s for n, s in zip(tokens, times, strict=True)]
    return {
        "standalone_first_call_s": first_s,
        "standalone_s": statistics.median(times),
        "standalone_tok_s": statistics.median(rates),
        "standalone_tok_s_runs": [round(x) for x in rates],
        "standalone_others_cores_runs": others,
        "standalone_tok_s_quiet": quiet_median(rates, others),
        "standalone_completion_length": statistics.mean(tokens) / (len(prompts) * sp.n),
    }


def bench_config(name: str, root: str, args, cli, model_fields, bench_train) -> dict:
    from align_jax import models

    data_dir = os.path.join(root, "data")
    config = make_config(name, data_dir, args, cli, model_fields)
    workdir = os.path.join(root, f"run_{name}")
    row = {
        "config": name,
        "params": models.count_params(config.model),
        "prompts": args.prompts,
        "group": args.group,
        "new_tokens": args.new_tokens,
        "prompt_len": int(config.data.max_prompt_len),
        "steps": args.steps,
        "mesh": ONE_DEVICE,
        "dtype": config.model.dtype,
    }
    share = bench_train.CpuShare
    row["others_cores_before_loop"] = wait_quiet(args.quiet_wait, share)
    print(f"{name}: {args.steps} loop steps ...", flush=True)
    row.update(in_loop(config, workdir, share))
    row["others_cores_before_standalone"] = wait_quiet(args.quiet_wait, share)
    print(f"{name}: standalone sampler, {args.runs} runs ...", flush=True)
    row.update(standalone(workdir, args.runs, share))
    row["ratio"] = row["tok_s"] / row["standalone_tok_s"]
    quiet = row["tok_s_quiet"], row["standalone_tok_s_quiet"]
    row["ratio_quiet"] = quiet[0] / quiet[1] if None not in quiet else None
    rows = args.prompts * args.group
    width = row["prompt_len"] + args.new_tokens
    update_flops = models.train_flops_per_token(config.model, width) * rows * width
    row["update_gflops"] = update_flops / row["update"] / 1e9
    row["prepare_gflops"] = update_flops / 3 / row["prepare"] / 1e9
    return row


def print_table(rows: list[dict], peak) -> None:
    print()
    head = (
        f"{'config':<9} {'params':>11} {'sampling s':>10} {'rewards s':>9} {'prepare s':>9} "
        f"{'update s':>8} {'sum s':>7} {'step s':>7}"
    )
    print("time split of one step (medians of steps 2..; share of the sum in brackets)")
    print(head)
    print("-" * len(head))
    for r in rows:
        parts = " ".join(f"{r[k]:>{w}.3f}" for (k, _), w in zip(PARTS, (10, 9, 9, 8), strict=True))
        step = f"{r['step']:>7.3f}" if r["step"] is not None else f"{'-':>7}"
        print(f"{r['config']:<9} {r['params']:>11,} {parts} {r['sum']:>7.3f} {step}")
        shares = " ".join(
            f"{'(%.0f%%)' % (100 * r[k] / r['sum']):>{w}}"
            for (k, _), w in zip(PARTS, (10, 9, 9, 8), strict=True)
        )
        print(f"{'':<9} {'':>11} {shares}")
    print()
    print(
        "generated tokens/s, sampler only: medians over all loop steps 2.. / standalone runs, "
        f"and over those\nwhile other processes used < {QUIET} cores ('quiet'; - if none); "
        "model GFLOP/s of the two jitted passes"
    )
    head = (
        f"{'config':<9} {'rows':>5} {'len':>5} {'in-loop':>8} {'alone':>7} {'ratio':>6} "
        f"{'quiet in-loop':>13} {'alone':>7} {'ratio':>6} {'update GF/s':>11} {'prepare GF/s':>12}"
    )
    print(head)
    print("-" * len(head))
    fmt = lambda v, w, d: f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    for r in rows:
        print(
            f"{r['config']:<9} {r['prompts'] * r['group']:>5} {r['completion_length']:>5.1f} "
            f"{r['tok_s']:>8.0f} {r['standalone_tok_s']:>7.0f} {r['ratio']:>6.2f} "
            f"{fmt(r['tok_s_quiet'], 13, 0)} {fmt(r['standalone_tok_s_quiet'], 7, 0)} "
            f"{fmt(r['ratio_quiet'], 6, 2)} {r['update_gflops']:>11.1f} "
            f"{r['prepare_gflops']:>12.1f}"
        )
    if peak:
        print(
            f"matmul peak {peak['n']}^2 fp32: {peak['gflops']:.1f} GFLOP/s (median; other "
            f"processes {peak['others_cores']:.2f} cores)"
        )
    for r in rows:
        print(
            f"{r['config']}: other processes (cores' worth) per loop step "
            f"{r['others_cores_steps']}, per standalone run {r['standalone_others_cores_runs']}"
        )


def one_device_error(cli):
    """A usage error unless jax sees exactly one device (what these benchmarks run on)."""
    import jax

    if jax.device_count() == 1:
        return None
    return cli.UsageError(
        f"jax sees {jax.device_count()} devices; this benchmark runs on one "
        "(drop --xla_force_host_platform_device_count from XLA_FLAGS)"
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
        f"{args.prompts} prompts x G={args.group}, {args.new_tokens} new tokens, "
        f"{args.steps} steps, {args.runs} standalone runs",
        flush=True,
    )
    peak = bench_train.matmul_peak(args.matmul_n, args.matmul_repeats) if args.matmul_n else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_grpo_") as tmp:
        root = args.keep or tmp
        for name in args.configs:
            rows.append(bench_config(name, root, args, cli, bench_sample.model_fields, bench_train))
    print_table(rows, peak)
    print()
    for r in rows:
        if peak:
            r["matmul_peak_gflops"] = round(peak["gflops"], 2)
        print("RESULT " + json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
