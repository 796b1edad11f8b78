"""Benchmark of one DPO train step: align_jax against TRL's DPOTrainer and Tunix's DPOTrainer.

Prints figures; asserts nothing about timings. In one run, on this machine's CPU, it measures

1. the peak of a jitted 2048 x 2048 fp32 matmul (tools/bench_train.py's `matmul_peak`), before
   and after the steps; the higher median is the peak the efficiencies are quoted against;
2. the DPO train step of each side on the same model and data shapes:

   - align_jax: the step built exactly as `align_jax.training.loop` builds it for
     `objective = dpo` (sigmoid, beta 0.1): a 1-device mesh, parameter and optimizer-state
     shardings, `make_train_step` + `jit_train_step` with donation, the frozen reference
     in the step's `frozen` argument (its log-probs computed in every step, not
     precomputed: `precompute_ref_logps=False`, the default), inside
     `parallel.sharding_context`. Batches are the pair pipeline's fields and dtypes
     (align_jax/data/pairs.py), placed on the device before timing. Timed: the jitted
     call until its loss is on the host.
   - TRL: `trl.DPOTrainer.train()` (CPU torch, fp32, `loss_type=["sigmoid"]`, beta 0.1) on a
     `LlamaForCausalLM` policy with an explicit frozen copy as `ref_model` (its log-probs
     computed in every step: `precompute_ref_log_probs=False`), gradient checkpointing
     and bf16 off (TRL turns both on by default). The data goes through TRL's own dataset
     preparation (text of a word-level tokenizer with one word per token id, built here,
     checked to give back the exact ids) and collator. Timed: from one `on_step_end`
     callback to the next, i.e. the trainer's whole loop per step (batch, policy forward
     and backward, reference forward, clipping, AdamW, its metrics).
   - Tunix: `tunix.sft.dpo.dpo_trainer.DPOTrainer.train()` (`algorithm="dpo"`, beta 0.1) on
     a `tunix.models.llama3` policy and a frozen copy as `ref_model` (Tunix runs the
     reference forward on every batch, in `_prepare_inputs`), fed tokenized
     `TrainingInput` batches. Tunix keeps up to 2 steps in flight; the benchmark's batch
     iterator waits for the previous step's parameters before handing out the next batch,
     so each step is timed whole, from one batch hand-out to the next (this gives up
     overlapping Tunix's Python work, milliseconds, with the previous step).

Same model everywhere: Llama-shaped, d_model 256, 4 layers, 4 query heads x head_dim 64, 2 KV
heads, SwiGLU MLP 768, vocab 4096, RMSNorm, RoPE, **untied** input embedding and LM head, fp32
parameters and compute, random init (std 0.02; Tunix's own init draws N(0, 0.01) and zero
MLP kernels, so the benchmark redraws its weights like the others'): 5,245,184 parameters,
which each side reports and the benchmark checks. Same data: 8 preference pairs per step, a
64-token prompt (bos + 63 ids) and 192-token completions (191 ids + eos), random ids, so each
chosen and rejected sequence has 256 tokens and all 192 completion tokens are scored. (TRL and
Tunix run the model over all 256 positions; align_jax over the 255 that have a next token.)
Same optimizer: AdamW (b1 0.9, b2 0.95, eps 1e-8, no weight decay, constant learning rate)
after global-norm clipping at 1.0 (TRL: Hugging Face's default, torch's fused AdamW). No
gradient accumulation. Each side also does its own per-step extras, as it ships: align_jax
the exact KL(policy || reference) metric over the vocabulary, TRL entropy / mean-logit /
top-1 metrics in its chunked LM head, Tunix the full [rows, 256, vocab] logits.

Model FLOPs (the same count for all three, from the model, not from what each side computes):
with N = the parameters the matmuls use, i.e. all but the input embedding table (N =
4,196,608: 3,148,032 in the layers and final norm, 1,048,576 in the LM head), T = 256 and
A = layers x heads x head_dim x T, one step of 4,096 tokens (8 pairs x 2 x 256) costs per
token 6N + 12A for the policy's forward and backward (`align_jax.models.
train_flops_per_token`, PaLM's count) plus 2N + 4A for the reference's forward: 154.7
GFLOP a step. Achieved GFLOP/s = that / step time; "of peak" = that / the matmul peak.

How the sides run. TRL and Tunix are never dependencies of align_jax: the benchmark runs
under align_jax's venv (`.venv`) and starts each of them as a worker process, this same file
with `--worker trl` or `--worker tunix`, under a separate benchmark venv (`.venv-bench`,
gitignored). Set it up once (tested with Python 3.11.7 and the versions in brackets; TRL
and Tunix share one venv, since Tunix 0.1.7 takes the jax 0.10.2 / flax 0.12.8 that
align_jax uses):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 transformers trl google-tunix==0.1.7
    # [torch 2.13.0+cpu, transformers 4.57.1, trl 1.16.0, google-tunix 0.1.7, jax 0.10.2,
    #  flax 0.12.8, optax 0.2.8]; `pip check` clean. Pin google-tunix: left free, pip's
    # resolver settled on 0.1.6 (0.1.7 wants safetensors<0.8).

The sides take turns, never running at once: each worker runs one real `train()` of
`--warmup` + `--rounds` x `--steps` steps and pauses inside it (a TRL callback, the Tunix
batch iterator) after the warm-up and after each round's steps until the driver says go.
Each round runs every side's `--steps` steps, the order rotated every round, and before
each side's turn the driver waits (`--quiet_wait`, up to 60 s) until other processes use
under 10% of the CPUs. Step time = the median over all timed steps after the warm-up; on a
shared machine the table also gives each side's median over its quiet rounds only (other
processes under 10% of the CPUs before the turn and under 0.2 cores during it), which are
the figures to compare when the all-steps ones carry a contention warning.

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_dpo.py
    .venv/bin/python tools/bench_dpo.py --rounds 5 --steps 3 --json /tmp/dpo.json
    .venv/bin/python tools/bench_dpo.py --sides align_jax --breakdown --profile
    .venv/bin/python tools/bench_dpo.py --keep_freed_memory      # see below

`--breakdown` also times parts of align_jax's step as separate jitted functions (2 threads,
as the step): the reference forward, the policy forward (the DPO loss with the reference
log-probs given), the policy forward + backward, and the backward as their difference, each
with its model FLOPs and GFLOP/s. `--profile` runs align_jax's step in a child process
pinned to ONE core, traces 3 steps with `jax.profiler` and joins the trace with the
compiled HLO: time per op and per (pass, kind) -- matmuls with their FLOPs and GFLOP/s
against a one-core matmul peak, zero-fills, scan stacking, copies, elementwise work --
where "backward" is an op whose metadata says `transpose(jvp(...))`. (On one core each op's
traced time is its whole cost; on 2 threads ops overlap and Eigen's dots run partly on pool
threads the trace does not attribute.)

`--keep_freed_memory` makes every side's process (driver, workers, profile child) call
`keep_freed_memory()` before jax or torch start: glibc's malloc then keeps freed memory for
reuse instead of unmapping every block over 32 MB, which otherwise makes each step
page-fault all of its large temporaries afresh (align_jax's step: 1 GB, 247k faults and
~0.55 s of kernel time a step). It changes the process, not any library: the default run
measures the sides as they ship.

Output: the table (with the load average), then one JSON line per side prefixed `RESULT `,
and the same lines in `--json PATH`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("align_jax", "trl", "tunix")
LABELS = {"align_jax": "align_jax", "trl": "TRL", "tunix": "Tunix"}

# The model (align_jax.config.model_config fields; the rest are its defaults: SwiGLU,
# RMSNorm eps 1e-5, RoPE theta 10000, untied embeddings, init std 0.02, fp32).
MODEL = dict(
    vocab_size=4096,
    d_model=256,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    head_dim=64,
    mlp_dim=768,
    max_seq_len=2048,
)
PAIRS, PROMPT_LEN, COMPLETION_LEN = 8, 64, 192
SEQ_LEN = PROMPT_LEN + COMPLETION_LEN
TOKENS_PER_STEP = PAIRS * 2 * SEQ_LEN
# Token ids: 0 pad, 1 bos, 2 eos; the random ids are drawn from [3, vocab).
PAD, BOS, EOS = 0, 1, 2
BETA = 0.1
OPTIMIZER = dict(learning_rate=1e-5, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip=1.0)


def parse_args(argv, cli):
    """The flags, checked; `cli` is align_jax.cli (one-line errors: `cli.UsageError`)."""
    p = cli.ArgumentParser(
        prog="tools/bench_dpo.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {SIDES}")
    p.add_argument("--steps", type=int, default=4, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of turns (order rotates)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument(
        "--bench_python",
        default=os.path.join(ROOT, ".venv-bench", "bin", "python"),
        help="python of the venv with torch, transformers, trl and google-tunix",
    )
    p.add_argument(
        "--quiet_wait",
        type=float,
        default=60.0,
        help="before each side's turn, wait up to this many seconds for the other processes "
        "on the machine to use under 10%% of the CPUs (0: don't wait)",
    )
    p.add_argument("--matmul_n", type=int, default=2048, help="side of the peak matmul")
    p.add_argument("--matmul_repeats", type=int, default=10, help="timed repeats of the matmul")
    p.add_argument("--breakdown", action="store_true", help="also time parts of align_jax's step")
    p.add_argument("--breakdown_runs", type=int, default=5, help="timed runs per part")
    p.add_argument("--profile", action="store_true", help="also profile align_jax's step, op by op")
    p.add_argument("--profile_top", type=int, default=25, help="ops listed by --profile")
    p.add_argument("--json", default="", help="also write the RESULT lines to this file")
    p.add_argument(
        "--keep_freed_memory",
        action="store_true",
        help="every side's process first tells glibc's malloc to keep freed memory for reuse "
        "(`keep_freed_memory`), before jax or torch start",
    )
    p.add_argument(
        "--scan_unroll",
        type=int,
        default=1,
        help="align_jax's config.model.scan_unroll (4 unrolls the model's 4-layer scan)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(args.sides) - set(SIDES))
    if unknown or not args.sides:
        raise cli.UsageError(f"--sides: unknown {unknown}; choose from {SIDES}")
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            raise cli.UsageError(f"--{name}={getattr(args, name)}; expected at least 1")
    if args.warmup < 1:
        raise cli.UsageError(f"--warmup={args.warmup}; expected at least 1 (the first compiles)")
    return args


def make_pairs(seed: int, n_batches: int = 4) -> list[dict]:
    """`n_batches` batches of PAIRS pairs of random ids, as plain lists (they travel to the
    workers as JSON): `prompt` [PAIRS, 64] (bos first), `chosen` / `rejected` [PAIRS, 192]
    (eos last). The steps cycle through them, so no step sees the previous step's batch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = MODEL["vocab_size"]
    out = []
    for _ in range(n_batches):
        prompt = rng.integers(EOS + 1, vocab, (PAIRS, PROMPT_LEN))
        prompt[:, 0] = BOS
        batch = {"prompt": prompt.tolist()}
        for side in ("chosen", "rejected"):
            completion = rng.integers(EOS + 1, vocab, (PAIRS, COMPLETION_LEN))
            completion[:, -1] = EOS
            batch[side] = completion.tolist()
        out.append(batch)
    return out


def model_flops(cfg) -> dict:
    """Model FLOPs of one DPO step (see the module docstring), from align_jax's counts."""
    from align_jax import models

    head = cfg.vocab_size * cfg.d_model
    n = models.count_params(cfg, include_embeddings=False) + head
    policy = models.train_flops_per_token(cfg, SEQ_LEN)  # 6N + 12A
    return {
        "n_matmul_params": n,
        "policy_train_per_token": policy,
        "reference_forward_per_token": policy / 3,  # 2N + 4A
        "step": policy * 4 / 3 * TOKENS_PER_STEP,
    }


# --------------------------------------------------------------------------- worker side
# Everything from here to the driver runs in the benchmark venv, which has no align_jax:
# these functions import only the standard library at module level.


class Channel:
    """The worker's end of the protocol: one JSON object per line, requests on stdin, replies
    on the real stdout (library prints are sent to stderr)."""

    def __init__(self):
        self._out = sys.stdout
        sys.stdout = sys.stderr

    def send(self, obj: dict) -> None:
        self._out.write(json.dumps(obj) + "\n")
        self._out.flush()

    def recv(self, op: str) -> dict:
        line = sys.stdin.readline()
        if not line:
            raise SystemExit(0)  # the driver went away
        req = json.loads(line)
        if req.get("op") != op:
            raise SystemExit(f"worker expected op {op!r}, got {req}")
        return req


class Pacer:
    """Times a training loop's steps and pauses the loop at the driver's turns.

    `step_done()` is called once per finished step. After the step counts of `plan` (the
    warm-up, then each round's steps) it sends those steps' times to the driver and blocks
    until the driver says "go", so the sides take turns on the cores; the pause is not part
    of any step's time. A step's time runs from the end of the previous one (or the resume).
    """

    def __init__(self, channel: Channel, plan: list[int]):
        self.channel = channel
        self.stops = list(itertools.accumulate(plan))
        self.times: list[float] = []
        self.done = 0
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    def step_done(self) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.done += 1
        if self.stops and self.done == self.stops[0]:
            self.stops.pop(0)
            self.channel.send({"times": self.times})
            self.times = []
            self.channel.recv("go")
            now = time.perf_counter()
        self.last = now


def token_names(vocab: int) -> list[str]:
    """The TRL worker's vocabulary: one word per token id."""
    return ["<pad>", "<bos>", "<eos>"] + [f"t{i}" for i in range(EOS + 1, vocab)]


def trl_worker(channel: Channel) -> None:
    """TRL's DPOTrainer on CPU torch (see the module docstring)."""
    import copy
    import tempfile

    import datasets
    import torch
    import transformers
    import trl
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        TrainerCallback,
    )

    datasets.disable_progress_bars()
    setup = channel.recv("setup")
    m, plan, seed = setup["model"], setup["plan"], setup["seed"]
    names = token_names(m["vocab_size"])
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )

    def text(ids, lead=""):
        return lead + " ".join(names[i] for i in ids)

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for batch in setup["data"]:
        for i in range(len(batch["prompt"])):
            rows["prompt"].append(text(batch["prompt"][i]))
            rows["chosen"].append(text(batch["chosen"][i], " "))
            rows["rejected"].append(text(batch["rejected"][i], " "))
    total = sum(plan)
    repeat = -(-total * PAIRS // len(rows["prompt"]))
    dataset = datasets.Dataset.from_dict({k: v * repeat for k, v in rows.items()})

    config = LlamaConfig(
        vocab_size=m["vocab_size"],
        hidden_size=m["d_model"],
        intermediate_size=m["mlp_dim"],
        num_hidden_layers=m["n_layers"],
        num_attention_heads=m["n_heads"],
        num_key_value_heads=m["n_kv_heads"],
        head_dim=m["head_dim"],
        hidden_act=m["activation"],
        max_position_embeddings=m["max_seq_len"],
        initializer_range=m["init_std"],
        rms_norm_eps=m["norm_eps"],
        tie_word_embeddings=m["tie_embeddings"],
        rope_theta=m["rope_theta"],
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(config).to(torch.float32)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = setup["optimizer"]
    args = trl.DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_dpo_trl_"),
        per_device_train_batch_size=PAIRS,
        max_steps=total,
        learning_rate=opt["learning_rate"],
        lr_scheduler_type="constant",
        adam_beta1=opt["b1"],
        adam_beta2=opt["b2"],
        adam_epsilon=opt["eps"],
        weight_decay=opt["weight_decay"],
        max_grad_norm=opt["clip"],
        beta=setup["beta"],
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        max_length=None,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
        logging_steps=total,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
    )
    pacer = Pacer(channel, plan)

    class Pace(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            pacer.start()

        def on_step_end(self, args, state, control, **kwargs):
            pacer.step_done()

    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Pace()],
    )
    trainer.remove_callback(transformers.PrinterCallback)  # its log lines
    first = trainer.train_dataset[0]
    batch0 = setup["data"][0]
    if (first["prompt_ids"], first["chosen_ids"], first["rejected_ids"]) != (
        batch0["prompt"][0],
        batch0["chosen"][0],
        batch0["rejected"][0],
    ):
        raise SystemExit("TRL's tokenization did not give back the benchmark's token ids")
    channel.send(
        {
            "params": sum(p.numel() for p in policy.parameters()),
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"trl {trl.__version__}",
            "threads": torch.get_num_threads(),
            "notes": f"optim {args.optim}",
        }
    )
    channel.recv("train")
    result = trainer.train()
    channel.send({"done": True, "mean_loss": float(result.training_loss)})
    channel.recv("quit")


def tunix_worker(channel: Channel) -> None:
    """Tunix's DPOTrainer on CPU jax (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tunix.models.llama3 import model as llama3
    from tunix.sft.dpo import dpo_trainer

    setup = channel.recv("setup")
    m, plan, seed = setup["model"], setup["plan"], setup["seed"]
    config = llama3.ModelConfig(
        num_layers=m["n_layers"],
        vocab_size=m["vocab_size"],
        embed_dim=m["d_model"],
        hidden_dim=m["mlp_dim"],
        num_heads=m["n_heads"],
        head_dim=m["head_dim"],
        num_kv_heads=m["n_kv_heads"],
        rope_theta=int(m["rope_theta"]),
        norm_eps=m["norm_eps"],
        weight_tying=m["tie_embeddings"],
    )
    policy = llama3.Llama3(config, rngs=nnx.Rngs(seed))
    # Redraw the weights as N(0, init_std) like the other sides (Tunix draws N(0, 1) and
    # zero MLP kernels); the RMSNorm scales (1-D) keep their ones.
    params = nnx.state(policy, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        m["init_std"] * jax.random.normal(k, x.shape, x.dtype) if x.ndim >= 2 else x
        for k, x in zip(keys, leaves, strict=True)
    ]
    nnx.update(policy, jax.tree.unflatten(treedef, leaves))
    graphdef, state = nnx.split(policy)
    reference = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))

    opt = setup["optimizer"]
    optimizer = optax.chain(
        optax.clip_by_global_norm(opt["clip"]),
        optax.adamw(
            opt["learning_rate"],
            b1=opt["b1"],
            b2=opt["b2"],
            eps=opt["eps"],
            weight_decay=opt["weight_decay"],
        ),
    )
    trainer = dpo_trainer.DPOTrainer(
        model=policy,
        ref_model=reference,
        optimizer=optimizer,
        training_config=dpo_trainer.DPOTrainingConfig(
            eval_every_n_steps=10**9, algorithm="dpo", beta=setup["beta"]
        ),
    )
    batches = []
    for batch in setup["data"]:
        prompt = np.asarray(batch["prompt"], np.int32)
        chosen = np.asarray(batch["chosen"], np.int32)
        rejected = np.asarray(batch["rejected"], np.int32)
        batches.append(
            {
                "prompt_ids": prompt,
                "prompt_mask": np.ones_like(prompt),
                "chosen_ids": chosen,
                "chosen_mask": np.ones_like(chosen),
                "rejected_ids": rejected,
                "rejected_mask": np.ones_like(rejected),
            }
        )
    pacer = Pacer(channel, plan)

    def finished() -> None:
        # The last dispatched step has finished once the parameters it writes exist.
        jax.block_until_ready(nnx.state(policy, nnx.Param))
        pacer.step_done()

    def batch_iterator():
        pacer.start()
        for i in range(sum(plan)):
            if i:
                finished()
            yield batches[i % len(batches)]
        finished()

    channel.send(
        {
            "params": sum(int(x.size) for x in jax.tree.leaves(nnx.state(policy, nnx.Param))),
            "versions": f"tunix {_version('google-tunix')}, jax {jax.__version__}, "
            f"flax {_version('flax')}",
            "threads": os.cpu_count(),
            "notes": "",
        }
    )
    channel.recv("train")
    trainer.train(batch_iterator())
    losses = trainer.metrics_logger.get_metric_history("", "loss", "train")
    channel.send({"done": True, "mean_loss": float(np.mean(losses))})
    channel.recv("quit")


def keep_freed_memory() -> bool:
    """align_jax.malloc's setting (standard library only, so the benchmark venv's workers,
    which have no align_jax installed, load it from this checkout)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from align_jax.malloc import keep_freed_memory as keep

    return keep()


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# --------------------------------------------------------------------------- align_jax side


class JaxSide:
    """align_jax's DPO train step, built as the training loop builds it (module docstring)."""

    name = "align_jax"

    def __init__(self, data: list[dict], seed: int, scan_unroll: int = 1):
        import jax

        from align_jax import models, objectives, parallel
        from align_jax.config import model_config
        from align_jax.data import pairs
        from align_jax.training import init as init_lib
        from align_jax.training import step as step_lib

        c = objectives.config_for("dpo")
        c.objective.update(loss_type="sigmoid", beta=BETA)  # precompute_ref_logps: False
        c.model = model_config(**MODEL, scan_unroll=scan_unroll)
        c.data.update(seq_len=SEQ_LEN, batch_size=PAIRS)
        c.optimizer.update(
            learning_rate=OPTIMIZER["learning_rate"],
            b1=OPTIMIZER["b1"],
            b2=OPTIMIZER["b2"],
            eps=OPTIMIZER["eps"],
            weight_decay=OPTIMIZER["weight_decay"],
            grad_clip_norm=OPTIMIZER["clip"],
            schedule="constant",
            warmup_steps=0,
        )
        c.mesh.update(data=1, fsdp=1, tensor=1)
        c.seed = seed
        self.config = config = c

        # The loop's construction, in the loop's order (align_jax/training/loop.py::_train).
        self.mesh = mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
        self.rules = rules = tuple(tuple(r) for r in config.sharding.rules)
        self.graphdef, shapes, axes = models.abstract_params(config.model)
        param_shardings = models.param_shardings(shapes, axes, mesh, rules)
        self.objective = objectives.build(config, self.graphdef)
        shapes, param_shardings, tx, schedule = init_lib.trained_models(
            config, self.objective, shapes, param_shardings, mesh, rules, lora=False
        )
        self.shardings = step_lib.state_shardings(tx, shapes, param_shardings, mesh)
        self.frozen_shardings = {"reference": param_shardings}
        self.tx, self.schedule = tx, schedule

        host = [self.pair_batch(b) for b in data]
        shapes_expected = pairs.batch_shapes(config.data)
        got = {k: (v.shape, v.dtype) for k, v in host[0].items()}
        if got != {k: (s.shape, s.dtype) for k, s in shapes_expected.items()}:
            raise SystemExit(f"align_jax batch fields differ from the pair pipeline's: {got}")
        with parallel.sharding_context(mesh, rules):
            _, params, _ = models.init_params(config.model, mesh, rules, seed)
            # The reference is the policy's starting point (DPO from one SFT checkpoint),
            # held as its own arrays: the step donates the policy's.
            self.frozen = {"reference": jax.tree.map(lambda x: x.copy(), params)}
            self.state = step_lib.init_state(tx, params, self.shardings)
            self.batch_sharding = step_lib.batch_shardings(host[0], mesh, rules)
            self.batches = [
                {k: jax.device_put(v, self.batch_sharding[k]) for k, v in b.items()} for b in host
            ]
            self.train_step = step_lib.jit_train_step(
                step_lib.make_train_step(self.objective, tx, schedule),
                self.shardings,
                self.batch_sharding,
                mesh,
                self.frozen_shardings,
            )
        self.n_params = sum(int(x.size) for x in jax.tree.leaves(params))
        self.rng = jax.random.key(seed)
        self.steps_done = 0
        self.losses: list[float] = []

    @staticmethod
    def pair_batch(pairs_batch: dict) -> dict:
        """A benchmark batch as the pair pipeline's fields (align_jax/data/pairs.py): rows of
        prompt + completion, `mask` 1 on the completion, `segment_ids` 1 (no padding)."""
        import numpy as np

        prompt = np.asarray(pairs_batch["prompt"], np.int32)
        out = {}
        for side in ("chosen", "rejected"):
            tokens = np.concatenate([prompt, np.asarray(pairs_batch[side], np.int32)], 1)
            mask = np.zeros(tokens.shape, np.float32)
            mask[:, PROMPT_LEN:] = 1.0
            out[f"{side}_tokens"] = tokens
            out[f"{side}_mask"] = mask
            out[f"{side}_segment_ids"] = np.ones(tokens.shape, np.int32)
        rows = prompt.shape[0]
        out["margin"] = np.zeros(rows, np.float32)
        out["label"] = np.ones(rows, np.float32)
        out["valid"] = np.ones(rows, np.float32)
        out["index"] = np.arange(rows, dtype=np.int32)
        return out

    def info(self) -> dict:
        import jax

        return {
            "params": self.n_params,
            "versions": f"jax {jax.__version__}, flax {_version('flax')}",
            "threads": os.cpu_count(),
            "notes": "",
        }

    def compile(self) -> float:
        from align_jax import parallel

        start = time.perf_counter()
        with parallel.sharding_context(self.mesh, self.rules):
            self.train_step.lower(self.state, self.batches[0], self.rng, self.frozen).compile()
        return time.perf_counter() - start

    def steps(self, n: int) -> list[float]:
        import jax

        from align_jax import parallel

        times = []
        with parallel.sharding_context(self.mesh, self.rules):
            for _ in range(n):
                i = self.steps_done
                batch = self.batches[i % len(self.batches)]
                start = time.perf_counter()
                self.state, metrics = self.train_step(
                    self.state, batch, jax.random.fold_in(self.rng, i), self.frozen
                )
                self.losses.append(float(metrics["loss"]))  # waits for the step
                times.append(time.perf_counter() - start)
                self.steps_done += 1
        return times

    def finish(self) -> dict:
        return {"mean_loss": statistics.fmean(self.losses)}


# --------------------------------------------------------------------------- align_jax parts


def breakdown(side: JaxSide, flops: dict, peak_gflops: float, runs: int) -> list[dict]:
    """Parts of align_jax's step, each a separate jitted function of the step's pieces:

    - reference forward: `sequence_logprobs` of the reference (as in the step's loss);
    - policy forward: the DPO loss with the reference log-probs in the batch (the
      `precompute_ref_logps` form of the same loss: no reference forward, no KL metric);
    - policy forward + backward: `value_and_grad` of that loss;
    - policy backward: the last two's difference (time and FLOPs), so it carries what the
      forward does only for the backward (saving the layers' activations).
    """
    import jax
    import jax.numpy as jnp

    from align_jax import parallel
    from align_jax.models import sequence_logprobs
    from align_jax.objectives.common import pair_rows

    objective, graphdef = side.objective, side.graphdef
    params, reference = side.state["params"], side.frozen["reference"]
    batch = side.batches[0]
    per_token_train = flops["policy_train_per_token"]

    def reference_logps(ref, batch):
        logps, _, _ = sequence_logprobs(graphdef, ref, *pair_rows(batch))
        return jnp.sum(logps, -1)

    with_refs = dict(batch)
    logps = jax.jit(reference_logps)(reference, batch)
    with_refs["ref_chosen_logps"], with_refs["ref_rejected_logps"] = jnp.split(logps, 2)

    def policy_loss(params, batch):
        return objective.loss_fn(params, None, batch, None)[0]

    def timed(fn, *fn_args) -> float:
        with parallel.sharding_context(side.mesh, side.rules):
            fn = jax.jit(fn)
            jax.block_until_ready(fn(*fn_args))
            jax.block_until_ready(fn(*fn_args))
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                jax.block_until_ready(fn(*fn_args))
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    tokens = TOKENS_PER_STEP
    parts = [
        ("reference forward", timed(reference_logps, reference, batch), per_token_train / 3),
        ("policy forward", timed(policy_loss, params, with_refs), per_token_train / 3),
        (
            "policy forward+backward",
            timed(jax.value_and_grad(policy_loss), params, with_refs),
            per_token_train,
        ),
    ]
    rows = [
        {"part": name, "s": s, "gflop": f * tokens / 1e9, "gflops": f * tokens / s / 1e9}
        for name, s, f in parts
    ]
    fwd, fwd_bwd = rows[1], rows[2]
    bwd_s = fwd_bwd["s"] - fwd["s"]
    bwd_gflop = fwd_bwd["gflop"] - fwd["gflop"]
    rows.append(
        {
            "part": "policy backward (fwd+bwd - fwd)",
            "s": bwd_s,
            "gflop": bwd_gflop,
            "gflops": bwd_gflop / bwd_s if bwd_s > 0 else float("nan"),
        }
    )
    for row in rows:
        row["of_peak"] = row["gflops"] / peak_gflops
    return rows


def hlo_ops(hlo_text: str) -> dict:
    """{instruction name: (shape, opcode, op_name metadata, matmul FLOPs)} of a compiled HLO
    module's text. A dot's FLOPs are 2 x its output elements x its contracted size; a
    fusion's are those of the dots it calls (YNNPACK's `ynn_fusion`s wrap one dot)."""
    import math
    import re

    inst = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w-]+)\(([^)]*)\)(.*)")
    dims_of: dict[str, list[int]] = {}
    computation_flops: dict[str, float] = {}
    ops = {}
    current = ""
    for line in hlo_text.splitlines():
        head = re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            continue
        found = inst.match(line)
        if not found:
            continue
        name, shape, opcode, operands, attrs = found.groups()
        dims = re.match(r"\w+\[([\d,]*)\]", shape)
        dims_of[name] = [int(d) for d in dims.group(1).split(",") if d] if dims else []
        flops = 0.0
        if opcode == "dot":
            lhs = operands.split(",")[0].strip().lstrip("%")
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
            k = [dims_of.get(lhs, [])[int(i)] for i in contracting.group(1).split(",") if i]
            flops = 2.0 * math.prod(dims_of[name]) * math.prod(k)
            computation_flops[current] = computation_flops.get(current, 0.0) + flops
        called = re.search(r"calls=%([\w.\-]+)", attrs)
        meta = re.search(r'op_name="([^"]+)"', attrs)
        ops[name] = [shape, opcode, meta.group(1) if meta else "", flops, called]
    for op in ops.values():
        called = op.pop()
        if op[1] == "fusion" and called:
            op[3] = computation_flops.get(called.group(1), 0.0)
    return {name: tuple(op) for name, op in ops.items()}


def op_kind(name: str, opcode: str, meta: str, flops: float) -> str:
    """An op's row in the profile: pass (forward, which includes the reference's, or
    backward: `transpose(jvp(...))` in its metadata) and kind."""
    where = "backward" if "transpose(jvp" in meta else "forward"
    if flops:
        return f"{where} matmul"
    if name.startswith("wrapped_broadcast") or opcode == "broadcast":
        kind = "zero-fill (broadcast)"
    elif "dynamic-update-slice" in name or "dynamic_update_slice" in meta:
        kind = "scan stacking (dynamic-update-slice)"
    elif "dynamic-slice" in name or "dynamic_slice" in meta:
        kind = "scan unstacking (dynamic-slice)"
    elif "scatter" in name or "scatter" in meta:
        kind = "scatter"
    elif "copy" in name or "transpose" in name or opcode == "copy":
        kind = "copy/transpose"
    else:
        kind = "elementwise/reduce"
    return f"{where} {kind}"


def profile_worker(seed: int, steps: int, top: int, out_path: str) -> None:
    """Where the time of align_jax's step goes, op by op, on ONE core (this process pins
    itself to CPU 0 before jax starts, so XLA:CPU runs one op at a time on one thread and
    each op's traced time is its whole cost; on the usual 2 threads ops overlap and Eigen's
    dots spread over pool threads the trace does not attribute). A `jax.profiler` trace of
    `steps` steps is joined with the compiled HLO: each op's shape, metadata and, for
    matmuls, FLOPs; matmul rates are quoted against a one-core matmul peak measured here."""
    import glob
    import gzip
    import tempfile
    from collections import Counter, defaultdict

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import jax
    from bench_train import matmul_peak

    from align_jax import parallel

    side = JaxSide(make_pairs(seed), seed)
    side.steps(2)
    peak = matmul_peak(2048, 5)["gflops"]
    with parallel.sharding_context(side.mesh, side.rules):
        compiled = side.train_step.lower(side.state, side.batches[0], side.rng, side.frozen)
        ops = hlo_ops(compiled.compile().as_text())
    trace_dir = tempfile.mkdtemp(prefix="bench_dpo_trace_")
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        side.steps(steps)
    wall = (time.perf_counter() - start) / steps
    path = sorted(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    op_s: dict[str, float] = defaultdict(float)
    calls: Counter = Counter()
    for e in events:
        if e["name"] in ops:
            op_s[e["name"]] += e["dur"] / 1e6 / steps
            calls[e["name"]] += 1
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # [s, GFLOP]
    for name, t in op_s.items():
        shape, opcode, meta, flops = ops[name]
        row = kinds[op_kind(name, opcode, meta, flops)]
        row[0] += t
        row[1] += flops * calls[name] / steps / 1e9
    top_ops = []
    for name, t in sorted(op_s.items(), key=lambda kv: -kv[1])[:top]:
        shape, opcode, meta, flops = ops[name]
        gflop = flops * calls[name] / steps / 1e9
        top_ops.append(
            {
                "op": name,
                "s": t,
                "calls": calls[name] // steps,
                "gflops": gflop / t if gflop else None,
                "shape": shape.split("{")[0],
                "kind": op_kind(name, opcode, meta, flops),
                "meta": meta,
            }
        )
    result = {
        "wall_s": wall,
        "op_s": sum(op_s.values()),
        "peak_1core_gflops": peak,
        "kinds": {k: {"s": v[0], "gflop": v[1]} for k, v in kinds.items()},
        "top_ops": top_ops,
        "trace_dir": trace_dir,
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


def profile(seed: int, steps: int, top: int, keep_freed: bool = False) -> dict:
    """Runs `profile_worker` in a child process (it must pin itself before jax starts)."""
    import tempfile

    out = tempfile.mktemp(prefix="bench_dpo_profile_", suffix=".json")
    cmd = [sys.executable, os.path.abspath(__file__), "--profile_worker", str(seed), str(steps)]
    extra = ["--keep_freed_memory"] if keep_freed else []
    subprocess.run([*cmd, str(top), out, *extra], check=True)
    with open(out) as f:
        return json.load(f)


# --------------------------------------------------------------------------- driver


class WorkerSide:
    """A TRL or Tunix worker: this file with `--worker NAME` under the benchmark venv."""

    def __init__(self, name: str, python: str, keep_freed: bool = False):
        if not os.path.exists(python):
            raise SystemExit(
                f"{python} not found: set up the benchmark venv (see this file's docstring) "
                "or leave the side out with --sides"
            )
        self.name = name
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker", name]
            + (["--keep_freed_memory"] if keep_freed else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.pid = self.proc.pid

    def _send(self, **req) -> None:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(
                f"{self.name} worker exited (code {self.proc.wait()}); see its stderr above"
            )
        return json.loads(line)

    def setup(self, **req) -> dict:
        self._send(op="setup", **req)
        return self._recv()

    def warmup(self) -> list[float]:
        self._send(op="train")
        return self._recv()["times"]

    def steps(self, n: int) -> list[float]:
        self._send(op="go")
        return self._recv()["times"]

    def finish(self) -> dict:
        self._send(op="go")
        out = self._recv()
        self._send(op="quit")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        return {"mean_loss": out["mean_loss"]}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class CpuMeter:
    """Cores' worth of CPU used by process `pid` and by everything else while it ran (from
    /proc; zeros where it is missing): tells a clean measurement from a contended one."""

    def __init__(self, pid: int):
        self.pid, self.own_s, self.others_s, self.wall_s = pid, 0.0, 0.0, 0.0

    def _read(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            with open(f"/proc/{self.pid}/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
        return busy, int(own[11]) + int(own[12])  # utime + stime, all threads

    def __enter__(self):
        self._t0, self._s0 = time.perf_counter(), self._read()
        return self

    def __exit__(self, *exc):
        s1 = self._read()
        self.wall_s += time.perf_counter() - self._t0
        if self._s0 is None or s1 is None:
            return
        hz = os.sysconf("SC_CLK_TCK")
        busy, own = s1[0] - self._s0[0], s1[1] - self._s0[1]
        self.own_s += own / hz
        self.others_s += max(busy - own, 0) / hz

    @property
    def others(self) -> float:
        return self.others_s / self.wall_s if self.wall_s else 0.0

    @property
    def own(self) -> float:
        return self.own_s / self.wall_s if self.wall_s else 0.0


def cpu_busy(window: float = 0.5) -> float:
    """Fraction of the machine's CPU time spent busy over `window` seconds (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v0 = [int(x) for x in f.readline().split()[1:]]
        time.sleep(window)
        with open("/proc/stat") as f:
            v1 = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    total = sum(v1) - sum(v0)
    idle = (v1[3] + v1[4]) - (v0[3] + v0[4])
    return 1.0 - idle / max(total, 1)


def wait_quiet(max_wait: float, threshold: float = 0.1) -> float:
    """Waits (up to `max_wait` s) until other processes use under `threshold` of the CPUs
    (called while every side is paused); returns the last busy fraction seen."""
    deadline = time.perf_counter() + max_wait
    busy = cpu_busy()
    while busy >= threshold and time.perf_counter() < deadline:
        busy = cpu_busy()
    return busy


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_sides(args, data: list[dict], fields: dict) -> tuple[dict, list[dict]]:
    """Sets every side up, then runs the warm-ups and the rounds of turns; returns
    ({side: the JaxSide or WorkerSide}, one result row per side)."""
    plan = [args.warmup] + [args.steps] * args.rounds
    sides, rows = {}, {}
    try:
        for name in args.sides:
            start = time.perf_counter()
            if name == "align_jax":
                side = JaxSide(data, args.seed, args.scan_unroll)
                info = side.info()
                info["compile_s"] = side.compile()
                pid = os.getpid()
            else:
                side = WorkerSide(name, args.bench_python, args.keep_freed_memory)
                info = side.setup(
                    model=fields, plan=plan, seed=args.seed, beta=BETA, optimizer=OPTIMIZER,
                    data=data,
                )  # fmt: skip
                pid = side.pid
            print(
                f"{LABELS[name]}: set up in {time.perf_counter() - start:.1f} s "
                f"({info['params']:,} parameters; {info['versions']})",
                flush=True,
            )
            sides[name] = side
            rows[name] = {"side": name, **info, "pid": pid, "rounds": []}
        for name, side in sides.items():
            start = time.perf_counter()
            warm = side.steps(args.warmup) if name == "align_jax" else side.warmup()
            rows[name]["warmup_s"] = [round(t, 3) for t in warm]
            print(
                f"{LABELS[name]}: {args.warmup} warm-up steps {time.perf_counter() - start:.1f} s "
                f"(first {warm[0]:.2f} s)",
                flush=True,
            )
        names = list(sides)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                busy = wait_quiet(args.quiet_wait)
                meter = CpuMeter(rows[name]["pid"])
                with meter:
                    times = sides[name].steps(args.steps)
                rows[name]["rounds"].append(
                    {"busy_before": round(busy, 2), "others_cores": round(meter.others, 2),
                     "own_cores": round(meter.own, 2), "wall_s": meter.wall_s, "times": times}
                )  # fmt: skip
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(
                    f"{LABELS[n]} {statistics.median(rows[n]['rounds'][-1]['times']):.3f} s"
                    f" (others {rows[n]['rounds'][-1]['others_cores']:.2f})"
                    for n in names
                )
                + f" (this round's medians; load {load_average()})",
                flush=True,
            )
        for name, side in sides.items():
            rows[name].update(side.finish())
    finally:
        for side in sides.values():
            if isinstance(side, WorkerSide):
                side.close()
    return sides, [rows[n] for n in args.sides]


def summarise(row: dict, flops: dict, peak: float) -> dict:
    """A side's figures from its rounds. `step_s` is the median over all timed steps;
    `quiet_step_s` the median over the steps of its quiet rounds only (before the turn other
    processes used < 10% of the CPUs and during it < 0.2 cores), None if it had none."""
    rounds = row.pop("rounds")
    row.pop("pid")
    times = [t for r in rounds for t in r["times"]]
    quiet = [
        t for r in rounds if r["busy_before"] < 0.1 and r["others_cores"] < 0.2 for t in r["times"]
    ]
    wall = sum(r["wall_s"] for r in rounds)
    step_s = statistics.median(times)
    quiet_s = statistics.median(quiet) if quiet else None
    gflops = flops["step"] / step_s / 1e9
    row.update(
        step_s=step_s,
        step_s_min=min(times),
        step_s_max=max(times),
        steps_timed=len(times),
        tokens_per_s=TOKENS_PER_STEP / step_s,
        model_gflop_per_step=flops["step"] / 1e9,
        gflops=gflops,
        of_peak=gflops / peak,
        own_cores=round(sum(r["own_cores"] * r["wall_s"] for r in rounds) / wall, 2),
        others_cores=round(sum(r["others_cores"] * r["wall_s"] for r in rounds) / wall, 2),
        quiet_steps=len(quiet),
        quiet_step_s=quiet_s,
        quiet_tokens_per_s=TOKENS_PER_STEP / quiet_s if quiet else None,
        quiet_gflops=flops["step"] / quiet_s / 1e9 if quiet else None,
        quiet_of_peak=flops["step"] / quiet_s / 1e9 / peak if quiet else None,
        rounds=[{k: v for k, v in r.items() if k != "wall_s"} for r in rounds],
        times_s=[round(t, 4) for t in times],
    )
    return row


def print_table(results: list[dict], peak: dict, flops: dict) -> None:
    base = results[0]
    vs = f"vs {LABELS[base['side']]}"
    print()
    print(
        f"DPO step: {PAIRS} pairs x (prompt {PROMPT_LEN} + completion {COMPLETION_LEN}) = "
        f"{TOKENS_PER_STEP} tokens; model {flops['step'] / 1e9:.1f} GFLOP/step "
        f"(N = {flops['n_matmul_params']:,} matmul parameters); "
        f"matmul peak {peak['gflops']:.1f} GFLOP/s (before {peak['before']:.1f}, "
        f"after {peak['after']:.1f}); load average {load_average()}"
    )
    head = (
        f"{'side':<10} {'step s':>7} {'min-max s':>13} {'tokens/s':>8} {'GFLOP/s':>8} "
        f"{'of peak':>7} {vs:>13} {'others':>6}  versions"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        spread = f"{r['step_s_min']:.2f}-{r['step_s_max']:.2f}"
        print(
            f"{LABELS[r['side']]:<10} {r['step_s']:>7.3f} {spread:>13} {r['tokens_per_s']:>8.0f} "
            f"{r['gflops']:>8.1f} {r['of_peak'] * 100:>6.1f}% "
            f"{r['tokens_per_s'] / base['tokens_per_s']:>12.2f}x {r['others_cores']:>6.2f}  "
            f"{r['versions']}"
        )
    quiet = [r for r in results if r["quiet_step_s"]]
    if quiet:
        qbase = quiet[0]
        print(
            "quiet rounds only (other processes < 0.1 of the CPUs before the turn, < 0.2 cores "
            f"during it; ratios vs {LABELS[qbase['side']]}):"
        )
        for r in quiet:
            print(
                f"{LABELS[r['side']]:<10} {r['quiet_step_s']:>7.3f} {r['quiet_steps']:>6} steps "
                f"{r['quiet_tokens_per_s']:>8.0f} {r['quiet_gflops']:>8.1f} "
                f"{r['quiet_of_peak'] * 100:>6.1f}% "
                f"{r['quiet_tokens_per_s'] / qbase['quiet_tokens_per_s']:>12.2f}x"
            )
    if any(r["others_cores"] > 0.2 for r in results):
        print("WARNING: other processes used CPU while steps were timed (others > 0.2 cores);")
        print("         the all-steps figures are contended: compare the quiet rows, or run again.")
    print("(others: cores' worth of CPU used by other processes while the side's steps ran)")


def print_breakdown(rows: list[dict]) -> None:
    print()
    print("align_jax's step in parts (separate jitted functions, medians):")
    print(f"{'part':<34} {'ms':>8} {'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>7}")
    for r in rows:
        print(
            f"{r['part']:<34} {r['s'] * 1e3:>8.1f} {r['gflop']:>7.1f} {r['gflops']:>8.1f} "
            f"{r['of_peak'] * 100:>6.1f}%"
        )


def print_profile(prof: dict) -> None:
    peak = prof["peak_1core_gflops"]
    print()
    print(
        f"align_jax's step by op, on ONE core: {prof['wall_s']:.2f} s a step, "
        f"{prof['op_s']:.2f} s of it in traced ops; one-core matmul peak {peak:.1f} GFLOP/s "
        f"(trace in {prof['trace_dir']}):"
    )
    print(
        f"  {'pass / kind':<46} {'ms':>8} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>7}"
    )
    kinds = sorted(prof["kinds"].items(), key=lambda kv: (kv[0].split()[0], -kv[1]["s"]))
    for name, k in kinds:
        rate = (
            f"{k['gflop'] / k['s']:>8.1f} {100 * k['gflop'] / k['s'] / peak:>6.1f}%"
            if k["gflop"]
            else ""
        )
        gflop = f"{k['gflop']:>7.1f}" if k["gflop"] else f"{'':>7}"
        print(
            f"  {name:<46} {k['s'] * 1e3:>8.1f} {100 * k['s'] / prof['op_s']:>5.1f}% {gflop} {rate}"
        )
    print(f"{'ms':>8} {'calls':>5} {'GFLOP/s':>7}  {'op':<30} {'shape':<28} {'kind':<28} metadata")
    for op in prof["top_ops"]:
        rate = f"{op['gflops']:>7.1f}" if op["gflops"] else f"{'':>7}"
        print(
            f"{op['s'] * 1e3:>8.1f} {op['calls']:>5} {rate}  {op['op']:<30} {op['shape']:<28} "
            f"{op['kind']:<28} {op['meta'][-50:]}"
        )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        # A worker runs in the benchmark venv, which has no align_jax: nothing on this path
        # (nor at the top of the file) may import it.
        if "--keep_freed_memory" in argv:
            keep_freed_memory()
        {"trl": trl_worker, "tunix": tunix_worker}[argv[1]](Channel())
        return 0
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    if argv[:1] == ["--profile_worker"]:
        if "--keep_freed_memory" in argv:
            keep_freed_memory()
        seed, steps, top, out = argv[1:5]
        profile_worker(int(seed), int(steps), int(top), out)
        return 0
    from align_jax import cli

    try:
        args = parse_args(argv, cli)
    except cli.UsageError as e:
        return cli.report(e)
    if args.keep_freed_memory:
        keep_freed_memory()
    import jax
    from bench_train import matmul_peak

    from align_jax.config import model_config

    cfg = model_config(**MODEL)
    fields = cfg.to_dict()
    flops = model_flops(cfg)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs); "
        f"sides {', '.join(LABELS[s] for s in args.sides)}; {args.warmup} warm-up + "
        f"{args.rounds} rounds x {args.steps} timed steps per side; "
        f"keep_freed_memory {args.keep_freed_memory}; scan_unroll {args.scan_unroll}; "
        f"load average {load_average()} at start",
        flush=True,
    )
    wait_quiet(args.quiet_wait)
    before = matmul_peak(args.matmul_n, args.matmul_repeats)
    print(f"matmul peak before: {before['gflops']:.1f} GFLOP/s", flush=True)
    data = make_pairs(args.seed)
    sides, results = run_sides(args, data, fields)
    wait_quiet(args.quiet_wait)
    after = matmul_peak(args.matmul_n, args.matmul_repeats)
    # The higher median: a contended matmul run must not inflate the efficiencies.
    peak = {
        "gflops": max(before["gflops"], after["gflops"]),
        "before": before["gflops"],
        "after": after["gflops"],
    }
    results = [summarise(r, flops, peak["gflops"]) for r in results]
    extra: dict = {}
    if "align_jax" in sides and (args.breakdown or args.profile):
        wait_quiet(args.quiet_wait)
    if "align_jax" in sides and args.breakdown:
        # A fresh peak next to the parts: a contended peak would inflate their shares.
        parts_peak = max(peak["gflops"], matmul_peak(args.matmul_n, args.matmul_repeats)["gflops"])
        extra["breakdown"] = breakdown(sides["align_jax"], flops, parts_peak, args.breakdown_runs)
    if "align_jax" in sides and args.profile:
        extra["profile"] = profile(args.seed, 3, args.profile_top, args.keep_freed_memory)

    print_table(results, peak, flops)
    if "breakdown" in extra:
        print_breakdown(extra["breakdown"])
    if "profile" in extra:
        print_profile(extra["profile"])
    print()
    lines = []
    for r in results:
        out = {
            "matmul_peak_gflops": round(peak["gflops"], 2),
            "matmul_peak_before_gflops": round(peak["before"], 2),
            "matmul_peak_after_gflops": round(peak["after"], 2),
            "tokens_per_step": TOKENS_PER_STEP,
            "n_matmul_params": flops["n_matmul_params"],
            "load_average": load_average(),
            "keep_freed_memory": args.keep_freed_memory,
            "scan_unroll": args.scan_unroll,
            **r,
        }
        if r["side"] == "align_jax" and "breakdown" in extra:
            out["breakdown"] = extra["breakdown"]
        if r["side"] == "align_jax" and "profile" in extra:
            prof = extra["profile"]
            out["profile_one_core"] = {
                "step_s": round(prof["wall_s"], 4),
                "peak_gflops": round(prof["peak_1core_gflops"], 2),
                "kinds": {
                    k: {n: round(x, 4) for n, x in v.items()} for k, v in prof["kinds"].items()
                },
            }
        lines.append("RESULT " + json.dumps(out))
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
