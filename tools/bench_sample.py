"""Benchmark of align_jax's Sampler against Hugging Face `generate` on this CPU.

Prints figures; asserts nothing about timings. For each model config and batch size it
measures new tokens per second of

- align_jax: `align_jax.rollout.Sampler.generate` (prefill + `lax.while_loop` decode, one
  jitted call; the timing includes placing the prompts and fetching the outputs to numpy),
  parameters from `align_jax.models.init_params` on a 1-device mesh, and
- Hugging Face: `LlamaForCausalLM.generate` (CPU torch, fp32, default SDPA attention and
  dynamic KV cache) on a randomly initialised model with the same architecture and size
  (hidden size, layers, heads, KV heads, head dim, MLP size, vocab, RoPE theta, RMS eps,
  tied or untied embeddings; the parameter counts of both are printed and must agree),

with the same prompts (random ids, no padding), prompt length 64, 128 new tokens,
temperature 1.0 and no EOS stop (align_jax: `eos_id=-1`; HF: `do_sample=True, top_k=0,
top_p=1.0, min_new_tokens=max_new_tokens`), so every row generates exactly 128 tokens.

Configs (`--configs`):

- `tiny`: the `tiny` preset of `align_jax.config.MODEL_PRESETS` (0.5M parameters).
- `ref5m`: the reference shape of the peer comparisons (d=256, 4 layers, 4 heads of 64, 2 KV heads,
  MLP 768, vocab 4096, untied; 5,245,184 parameters), so figures compare with that table.
- `llama25m`: the Llama-shaped shape of tools/bench_train.py (d=512, 6 layers, 8 heads of
  64, 4 KV heads, MLP 1408, vocab 8192, untied; 26,089,984 parameters).

How the two sides run. torch is never imported into align_jax's environment: the
benchmark runs under align_jax's venv (`.venv`) and starts one persistent worker process,
this same file with `--hf_worker`, under a separate benchmark venv (`.venv-bench`) that
holds torch 2.13.0 (CPU wheel) and transformers. The two talk over the worker's stdin /
stdout, one JSON line per request, and take turns (one align_jax run, then one HF run, the
order swapped every repetition), so machine noise hits both alike and they never compete
for the 2 cores. Set the benchmark venv up once:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 transformers   # pinned: newer torch is CUDA-sized

Then:

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_sample.py
    .venv/bin/python tools/bench_sample.py --configs ref5m --batches 16 --runs 7
    .venv/bin/python tools/bench_sample.py --no_hf             # align_jax only
    .venv/bin/python tools/bench_sample.py --breakdown         # + prefill / decode-step split

The machine is shared and noisy, and torch's OpenMP threads suffer most from another
process on the 2 cores (a tiny batch-1 `generate` was seen to take 0.17 s alone and 2.1 s
beside a training run). So before each timed pair the benchmark waits (`--quiet_wait`, up
to 30 s) until other processes use under 10% of the CPUs; the busy fraction it last saw
is in each row's JSON (`other_cpu_busy`), and a row measured beside other work says so.

Timing: one untimed warm-up call per side (align_jax: compiles; its wall time is printed as
`first call`, and `compile ~` = first call - median run), then `--runs` timed calls each,
alternating; medians are reported. `--breakdown` also times align_jax's prefill alone, the
sampling choice alone, and the model part of a decode step (`extend` + LM head, in a loop
of 16 steps as in the sampler), as separate jitted functions.

Output: a table, then one JSON line per (config, batch) row, prefixed `RESULT `.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("tiny", "ref5m", "llama25m")

# The model shapes (align_jax.config.model_config fields). `tiny` is the preset itself.
SHAPES = {
    "tiny": {},
    "ref5m": dict(
        vocab_size=4096,
        d_model=256,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=64,
        mlp_dim=768,
        max_seq_len=2048,
    ),
    "llama25m": dict(
        vocab_size=8192,
        d_model=512,
        n_layers=6,
        n_heads=8,
        n_kv_heads=4,
        head_dim=64,
        mlp_dim=1408,
        max_seq_len=2048,
    ),
}


def parse_args(argv, cli):
    """The flags, checked; `cli` is align_jax.cli (one-line errors: `cli.UsageError`)."""
    p = cli.ArgumentParser(
        prog="tools/bench_sample.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {CONFIGS}")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=5, help="timed runs per side (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side before timing")
    p.add_argument("--no_hf", action="store_true", help="align_jax only")
    p.add_argument(
        "--hf_python",
        default=os.path.join(ROOT, ".venv-bench", "bin", "python"),
        help="python of the venv with torch + transformers",
    )
    p.add_argument(
        "--breakdown", action="store_true", help="also time align_jax's prefill and one decode step"
    )
    p.add_argument(
        "--quiet_wait",
        type=float,
        default=30.0,
        help="before each timed pair, wait up to this many seconds for the other processes on "
        "the machine to use under 10%% of the CPUs (0: don't wait); what was seen is reported",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="parameter and compute dtype of both models",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise cli.UsageError(f"--configs: unknown {unknown}; choose from {CONFIGS}")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        raise cli.UsageError(f"--batches={args.batches!r}; expected integers, e.g. 1,16") from None
    args.configs = configs
    return args


def model_fields(name: str, dtype: str = "float32") -> dict:
    """The align_jax model config of `name`, as a plain dict (shared with the HF worker);
    parameters stored and computed in `dtype`."""
    from align_jax.config import model_config

    shape = dict(SHAPES[name], param_dtype=dtype, dtype=dtype)
    cfg = model_config("tiny", **shape) if name == "tiny" else model_config(**shape)
    return cfg.to_dict()


def make_prompts(vocab: int, batch: int, length: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, size=(batch, length)).tolist()


# --------------------------------------------------------------------------- HF worker side


def hf_worker() -> None:
    """Reads one JSON request per stdin line, answers one JSON line on stdout.

    Requests: {"op": "setup", "model": fields, "batch", "prompt_len", "new_tokens",
    "temperature", "prompts", "seed"} -> {"params", "threads", "versions"};
    {"op": "run", "seed"} -> {"seconds", "new_tokens"}; {"op": "quit"}.
    """
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    state: dict = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # keep library prints off the protocol channel
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "setup":
            m = req["model"]
            if m["rope_scaling"]["type"] != "none":
                raise SystemExit("the HF worker handles plain RoPE only")
            config = LlamaConfig(
                vocab_size=m["vocab_size"],
                hidden_size=m["d_model"],
                intermediate_size=m["mlp_dim"],
                num_hidden_layers=m["n_layers"],
                num_attention_heads=m["n_heads"],
                num_key_value_heads=m["n_kv_heads"],
                head_dim=m["head_dim"],
                hidden_act=m["activation"],
                max_position_embeddings=max(
                    m["max_seq_len"], req["prompt_len"] + req["new_tokens"]
                ),
                initializer_range=m["init_std"],
                rms_norm_eps=m["norm_eps"],
                tie_word_embeddings=m["tie_embeddings"],
                rope_parameters={"rope_type": "default", "rope_theta": m["rope_theta"]},
                attention_bias=m["qkv_bias"],
                mlp_bias=False,
                pad_token_id=0,
                bos_token_id=None,
                eos_token_id=None,
            )
            torch.manual_seed(req["seed"])
            model = LlamaForCausalLM(config).to(getattr(torch, m["param_dtype"])).eval()
            input_ids = torch.tensor(req["prompts"], dtype=torch.long)
            n = req["new_tokens"]
            kwargs = dict(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=req["temperature"],
                top_k=0,
                top_p=1.0,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
            )
            state = dict(model=model, kwargs=kwargs, prompt_len=input_ids.shape[1])
            reply = {
                "params": sum(p.numel() for p in model.parameters()),
                "threads": torch.get_num_threads(),
                "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
            }
        elif req["op"] == "run":
            torch.manual_seed(req["seed"])
            start = time.perf_counter()
            with torch.inference_mode():
                seqs = state["model"].generate(**state["kwargs"])
            seconds = time.perf_counter() - start
            reply = {"seconds": seconds, "new_tokens": int(seqs[:, state["prompt_len"] :].numel())}
        else:
            raise SystemExit(f"unknown request {req}")
        out.write(json.dumps(reply) + "\n")
        out.flush()


class HFClient:
    def __init__(self, python: str):
        if not os.path.exists(python):
            raise SystemExit(
                f"{python} not found: set up the benchmark venv (see this file's docstring) "
                "or pass --no_hf"
            )
        env = dict(os.environ)
        env.pop("JAX_PLATFORMS", None)
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--hf_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def call(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"HF worker exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.call_noreply(op="quit")
        finally:
            self.proc.wait(timeout=30)

    def call_noreply(self, **req) -> None:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        self.proc.stdin.close()


# --------------------------------------------------------------------------- align_jax side


class JaxSide:
    def __init__(self, fields: dict, seed: int):
        import jax

        from align_jax import parallel
        from align_jax.config import DEFAULT_RULES, model_config
        from align_jax.models import count_params, init_params
        from align_jax.rollout import Sampler

        self.cfg = model_config(**{k: v for k, v in fields.items() if k != "rope_scaling"})
        self.cfg.rope_scaling.update(fields["rope_scaling"])
        self.mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        self.rules = DEFAULT_RULES
        self.graphdef, self.params, _ = init_params(self.cfg, self.mesh, self.rules, seed)
        self.n_params = count_params(self.cfg)
        self.sampler = Sampler(self.graphdef, self.mesh, self.rules, eos_id=-1, pad_id=0)

    def run(self, prompts, sp, seed: int) -> tuple[float, int]:
        start = time.perf_counter()
        out = self.sampler.generate(self.params, prompts, sp, seed=seed)
        seconds = time.perf_counter() - start
        return seconds, int(out["mask"].sum())

    def breakdown(self, prompts, sp, runs: int, extra_slots: int = 512) -> dict:
        """Parts of a sampler call, each its own jitted function built from the pieces the
        sampler uses: the prefill (`extend` over the prompt + LM head), the sampling choice
        (`choose_tokens`: filtering, the draw, the log-prob), and the model part of a decode step
        (`extend` of one token + LM head, timed over 16 steps of a loop as in the sampler)
        with the sampler's cache length and with
        `extra_slots` more (empty, masked) cache slots. Attention over the extra slots adds
        almost no FLOPs, so the difference is what handling the cache costs per slot."""
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from align_jax import parallel
        from align_jax.models.decode import extend, init_cache, layer_blocks
        from align_jax.models.layers import layer_attention, rope_tables
        from align_jax.rollout.sampler import choose_tokens

        batch, plen = len(prompts), len(prompts[0])
        tokens = jnp.asarray(prompts, jnp.int32)
        graphdef, mesh, rules, cfg = self.graphdef, self.mesh, self.rules, self.cfg

        def kv_valid_for(total):
            return jnp.concatenate(
                [jnp.ones_like(tokens), jnp.zeros((batch, total - plen), jnp.int32)], 1
            )

        def prefill(params, tokens, kv_valid):
            with parallel.sharding_context(mesh, rules):
                model = nnx.merge(graphdef, params)
                cache = init_cache(cfg, batch, kv_valid.shape[1], self.sampler.cache_dtype)
                pos = jnp.broadcast_to(jnp.arange(plen), tokens.shape)
                hidden, cache = extend(model, tokens, pos, kv_valid, cache, 0)
                return model.logits(hidden[:, -1:])[:, 0], cache

        def model_step(params, cache, kv_valid, token, steps):
            # As in the sampler's loop: the layers sliced once, then `steps` decode steps
            # with the cache and the rotary tables in the loop's carry (the sampler makes
            # the next step's tables in each step: [layers, B, 1, 1, Dh/2], microseconds).
            # Timed at 16 and 32 steps; the difference / 16 leaves out what a call pays once
            # (slicing the layers, copying the cache).
            with parallel.sharding_context(mesh, rules):
                model = nnx.merge(graphdef, params)
                blocks = layer_blocks(model)
                pos = jnp.full((batch, 1), plen, jnp.int32)
                inv_freq = layer_attention(cfg)[0]

                def body(_, carry):
                    cache, token, rope = carry
                    hidden, cache = extend(
                        model, token[:, None], pos, kv_valid, cache, plen, blocks, rope
                    )
                    token = jnp.argmax(model.logits(hidden)[:, 0], -1).astype(jnp.int32)
                    return cache, token, rope

                rope = rope_tables(pos, inv_freq)
                return jax.lax.fori_loop(0, steps, body, (cache, token, rope))

        def choose(logits, rng):  # the sampler draws all steps' uniforms before its loop
            return choose_tokens(logits, jax.random.uniform(rng, (batch,)), sp)

        prefill_j, choose_j = jax.jit(prefill), jax.jit(choose)
        step_j = jax.jit(model_step, static_argnames="steps")
        rng = jax.random.key(0)

        def timed(fn, *args):
            jax.block_until_ready(fn(*args))  # compile + warm
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        out = {}
        total = plen + sp.max_new_tokens
        for key, length in (("", total), ("_long", total + extra_slots)):
            kv_valid = kv_valid_for(length)
            logits, cache = prefill_j(self.params, tokens, kv_valid)
            token = choose_j(logits, rng)[0]
            if not key:
                out["prefill_s"] = timed(prefill_j, self.params, tokens, kv_valid)
                out["choose_s"] = timed(choose_j, logits, rng)
            args = (self.params, cache, kv_valid, token)
            steps_32 = timed(functools.partial(step_j, steps=32), *args)
            out[f"model_step{key}_s"] = (
                steps_32 - timed(functools.partial(step_j, steps=16), *args)
            ) / 16
        out["cache_us_per_slot"] = (
            1e6 * (out["model_step_long_s"] - out["model_step_s"]) / extra_slots
        )
        return out


# --------------------------------------------------------------------------- driver


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_busy(window: float = 0.5) -> float:
    """Fraction of the machine's CPU time spent busy over `window` seconds (from /proc/stat);
    called while this benchmark itself is idle, so it measures the other processes."""
    try:

        def read():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return sum(v), v[3] + v[4]  # total, idle + iowait

        t0, i0 = read()
        time.sleep(window)
        t1, i1 = read()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1)
    except (OSError, ValueError, IndexError):
        return 0.0


def _wait_quiet(max_wait: float, threshold: float = 0.1) -> float:
    """Waits (up to `max_wait` s) until other processes use < `threshold` of the CPUs;
    returns the last busy fraction seen."""
    deadline = time.perf_counter() + max_wait
    busy = _cpu_busy()
    while busy >= threshold and time.perf_counter() < deadline:
        busy = _cpu_busy()
    return busy


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--hf_worker"]:
        # The HF side runs this file in the benchmark venv, which has no align_jax: nothing
        # below (nor at the top of the file) may import it on this path.
        hf_worker()
        return 0
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, ROOT)
    import jax

    from align_jax import cli

    try:
        args = parse_args(argv, cli)
    except cli.UsageError as e:
        return cli.report(e)

    from align_jax.rollout import SamplingParams

    configs, batches = args.configs, args.batches
    sp = SamplingParams(max_new_tokens=args.new_tokens, temperature=args.temperature)
    hf = None if args.no_hf else HFClient(args.hf_python)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs); "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, T={args.temperature}, "
        f"{args.dtype}, "
        f"{args.runs} timed runs after {args.warmup} warm-up, medians; "
        f"load average {_load()} at start",
        flush=True,
    )
    rows = []
    try:
        for name in configs:
            fields = model_fields(name, args.dtype)
            side = JaxSide(fields, args.seed)
            for batch in batches:
                prompts = make_prompts(fields["vocab_size"], batch, args.prompt_len, args.seed)
                expect = batch * args.new_tokens
                row = {
                    "config": name,
                    "params": side.n_params,
                    "batch": batch,
                    "prompt_len": args.prompt_len,
                    "new_tokens": args.new_tokens,
                    "dtype": args.dtype,
                }
                start = time.perf_counter()
                side.run(prompts, sp, seed=0)
                row["jax_first_call_s"] = time.perf_counter() - start
                for w in range(1, args.warmup):
                    side.run(prompts, sp, seed=w)
                if hf is not None:
                    info = hf.call(
                        op="setup",
                        model=fields,
                        batch=batch,
                        prompt_len=args.prompt_len,
                        new_tokens=args.new_tokens,
                        temperature=args.temperature,
                        prompts=prompts,
                        seed=args.seed,
                    )
                    if info["params"] != side.n_params:
                        raise SystemExit(
                            f"{name}: HF model has {info['params']} parameters, "
                            f"align_jax {side.n_params}: the shapes differ"
                        )
                    row["hf_threads"], row["hf_versions"] = info["threads"], info["versions"]
                    first = hf.call(op="run", seed=0)
                    row["hf_first_call_s"] = first["seconds"]
                    for w in range(1, args.warmup):
                        hf.call(op="run", seed=w)
                jax_times, hf_times = [], []
                busy_seen = []
                for r in range(args.runs):
                    busy_seen.append(_wait_quiet(args.quiet_wait))
                    order = ("jax", "hf") if r % 2 == 0 else ("hf", "jax")
                    for who in order:
                        if who == "jax":
                            seconds, n = side.run(prompts, sp, seed=100 + r)
                            jax_times.append(seconds)
                        elif hf is not None:
                            res = hf.call(op="run", seed=100 + r)
                            seconds, n = res["seconds"], res["new_tokens"]
                            hf_times.append(seconds)
                        else:
                            continue
                        if n != expect:
                            raise SystemExit(f"{who} generated {n} tokens, expected {expect}")
                row["other_cpu_busy"] = [round(b, 2) for b in busy_seen]
                jax_s = statistics.median(jax_times)
                row["jax_s"] = jax_s
                row["jax_tok_s"] = expect / jax_s
                row["jax_compile_s"] = row["jax_first_call_s"] - jax_s
                row["jax_runs_s"] = [round(t, 4) for t in jax_times]
                row["jax_best_tok_s"] = expect / min(jax_times)
                if hf_times:
                    hf_s = statistics.median(hf_times)
                    row["hf_s"] = hf_s
                    row["hf_tok_s"] = expect / hf_s
                    row["hf_runs_s"] = [round(t, 4) for t in hf_times]
                    row["hf_best_tok_s"] = expect / min(hf_times)
                    row["ratio"] = row["jax_tok_s"] / row["hf_tok_s"]
                if args.breakdown:
                    bd = side.breakdown(prompts, sp, args.runs)
                    row.update({k: round(v, 6) for k, v in bd.items()})
                    row["est_call_s"] = bd["prefill_s"] + args.new_tokens * (
                        bd["choose_s"] + bd["model_step_s"]
                    )
                rows.append(row)
                hf_txt = f"{row['hf_tok_s']:.0f}" if "hf_tok_s" in row else "-"
                print(
                    f"  {name} batch {batch}: align_jax {row['jax_tok_s']:.0f} tok/s, "
                    f"HF {hf_txt} tok/s",
                    flush=True,
                )
    finally:
        if hf is not None:
            hf.close()

    noisy = [f"{r['config']}/{r['batch']}" for r in rows if max(r["other_cpu_busy"]) >= 0.1]
    if noisy:
        print(f"\nrows timed while other processes were busy (pessimistic): {', '.join(noisy)}")
    print(f"\nload average {_load()} at the end (this benchmark's own load included)")
    head = (
        f"{'config':<9} {'params':>11} {'batch':>5} {'align_jax tok/s':>15} {'HF tok/s':>9} "
        f"{'ratio':>6} {'jax 1st call s':>14} {'jax compile~ s':>14} {'HF 1st call s':>13}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        hf_tok = f"{r['hf_tok_s']:>9.0f}" if "hf_tok_s" in r else f"{'-':>9}"
        ratio = f"{r['ratio']:>6.2f}" if "ratio" in r else f"{'-':>6}"
        hf_first = f"{r['hf_first_call_s']:>13.2f}" if "hf_first_call_s" in r else f"{'-':>13}"
        print(
            f"{r['config']:<9} {r['params']:>11,} {r['batch']:>5} {r['jax_tok_s']:>15.0f} "
            f"{hf_tok} {ratio} {r['jax_first_call_s']:>14.2f} {r['jax_compile_s']:>14.2f} "
            f"{hf_first}"
        )
    if args.breakdown:
        print()
        print(
            "align_jax per call: prefill once, then per decode step: choose (sampling) + "
            "model (extend + LM head);\n'+512 slots': model step with 512 more empty cache "
            "slots; 'est call' = prefill + 128 x (choose + model) vs the measured call\n"
            "(the model step attends over the whole cache; the sampler's decode chunks read "
            "fewer slots, so 'est call' runs high)"
        )
        print(
            f"{'config':<9} {'batch':>5} {'prefill ms':>10} {'choose ms':>9} {'model ms':>9} "
            f"{'+512 slots ms':>13} {'cache us/slot':>13} {'est call s':>10} {'call s':>7}"
        )
        for r in rows:
            print(
                f"{r['config']:<9} {r['batch']:>5} {1e3 * r['prefill_s']:>10.2f} "
                f"{1e3 * r['choose_s']:>9.3f} {1e3 * r['model_step_s']:>9.3f} "
                f"{1e3 * r['model_step_long_s']:>13.3f} {r['cache_us_per_slot']:>13.2f} "
                f"{r['est_call_s']:>10.3f} {r['jax_s']:>7.3f}"
            )
    print()
    for r in rows:
        print("RESULT " + json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
