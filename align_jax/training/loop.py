"""The training loop: batch -> step -> metrics -> eval -> checkpoint.

It does not know which objective it runs. What it guarantees:
- Running again in a workdir with checkpoints resumes from the latest one, data position
  and RNG included, so a stopped-and-resumed run logs the same metrics as an uninterrupted one.
- SIGTERM (how TPU VMs are preempted) saves a checkpoint and exits cleanly.
- A non-finite loss stops the run before anything is saved, so the last good checkpoint stays.
- Only one run uses a workdir at a time (an advisory lock on `workdir/.lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal

import jax
import numpy as np

from align_jax import checkpoint as ckpt
from align_jax import models, objectives, parallel
from align_jax.data import listwise as listwise_data
from align_jax.data import pairs as pairs_data
from align_jax.data import pretrain as pretrain_data
from align_jax.data import sft as sft_data
from align_jax.data import unpaired as unpaired_data
from align_jax.data.pipeline import to_global_batch
from align_jax.data.tokenizer import Tokenizer
from align_jax.interop import hf
from align_jax.training import lora as lora_training
from align_jax.training import metrics as metrics_lib
from align_jax.training import step as step_lib
from align_jax.training.optimizer import make_optimizer

log = logging.getLogger("align_jax")


class TrainingError(RuntimeError):
    """A run that must stop, with a one-line reason for the user."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
    # One lock per JAX process: the processes of one multi-host job share the workdir.
    suffix = f".{jax.process_index()}" if jax.process_count() > 1 else ""
    path = os.path.join(workdir, ".lock" + suffix)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise TrainingError(
            f"workdir '{workdir}' is in use by another run ({owner}); "
            "wait for it to finish or choose another --workdir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class _StopFlag:
    """Set by SIGTERM; checked after each step (and agreed across hosts by Orbax)."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            log.warning("received signal %d: saving a checkpoint and exiting", signum)
            self.set = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# batch_kind -> the data module that builds those batches (load_source, make_train_iterator,
# make_eval_iterator, count_stats). Later stages add theirs here.
DATA_PIPELINES = {
    "tokens": pretrain_data,
    "sft": sft_data,
    "pairs": pairs_data,
    "lists": listwise_data,
    "unpaired": unpaired_data,
}


def _check_finite(step: int, metrics: dict, last_saved: int | None) -> None:
    """The loss, the gradient and the updated parameters of `step` must all be finite.

    The loss alone is not enough: the update of a step with a finite loss can still leave
    non-finite parameters, which the next checkpoint would then keep.
    """
    bad = {k: float(metrics[k]) for k in ("loss", "grad_norm", "param_norm")}
    bad = {k: v for k, v in bad.items() if not math.isfinite(v)}
    if bad:
        kept = (
            f"the last good checkpoint (step {last_saved}) is kept"
            if last_saved
            else "no checkpoint was written"
        )
        what = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise TrainingError(
            f"non-finite loss or parameters ({what}) at step {step}: stopping; {kept}. "
            "Lower config.optimizer.learning_rate or check the data."
        )


def train(config, workdir: str) -> dict:
    """Runs `config` in `workdir`; returns the last logged metrics."""
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir), _StopFlag() as stop:
        return _train(config, workdir, stop)


def _train(config, workdir: str, stop: _StopFlag) -> dict:
    mesh = parallel.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)

    if config.init_from and hf.is_hf_dir(config.init_from):
        # A Hugging Face checkpoint defines the architecture; the config keeps dtypes, remat.
        hf_config = hf.read_hf_config(config.init_from)
        with config.unlocked():
            config.model = hf.model_config_from_hf(hf_config, config.init_from, like=config.model)
        log.info("config.model from %s/config.json (%s)", config.init_from, hf_config["model_type"])
    tokenizer = Tokenizer.load(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise TrainingError(
            f"config.model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ({config.data.tokenizer})"
        )

    graphdef, param_shapes, param_axes = models.abstract_params(config.model)
    param_shardings = models.param_shardings(param_shapes, param_axes, mesh, rules)
    objective = objectives.build(config, graphdef)
    base = base_shapes = base_shardings = None
    if models.lora_settings(config.model) is not None:
        # Only adapters (and new heads) train and are checkpointed; the base travels in the
        # step's `frozen` argument (align_jax/training/lora.py).
        param_shapes, base_shapes = lora_training.split(param_shapes)
        param_shardings, base_shardings = lora_training.split(param_shardings)
        base = lora_training.load_base(config, base_shapes, base_shardings)
        objective = lora_training.wrap_objective(objective, param_shapes)
    tx, schedule = make_optimizer(config.optimizer, config.total_steps)
    shardings = step_lib.state_shardings(tx, param_shapes, param_shardings, mesh)

    data = DATA_PIPELINES[objective.batch_kind]
    train_source = data.load_source(config.data, "train", tokenizer)
    eval_source = (
        data.load_source(config.data, "eval", tokenizer) if config.data.eval_files else None
    )
    for split, source in (("train", train_source), ("eval", eval_source)):
        if source is not None:
            log.info("%s data: %s", split, data.count_stats(source))
    frozen, frozen_shardings, ref_tables = None, None, {}
    if objective.needs_reference:
        ref_shapes, ref_shardings = (
            (param_shapes, param_shardings) if base is None else (base_shapes, base_shardings)
        )
        frozen, ref_tables = _reference(
            config, objective, data, tokenizer, mesh, rules, workdir,
            ref_shapes, ref_shardings, {"train": train_source, "eval": eval_source}, base,
        )  # fmt: skip
        frozen_shardings = ref_shardings if frozen is not None else None
    if base is not None:
        separate = frozen is not None and frozen is not base
        frozen = {"base": base, "reference": frozen if separate else None}
        frozen_shardings = {
            "base": base_shardings,
            "reference": ref_shardings if separate else None,
        }
    table_kwargs = lambda split: {"ref_table": ref_tables[split]} if ref_tables else {}  # noqa: E731
    train_iter = data.make_train_iterator(
        config.data, tokenizer, seed=config.seed, source=train_source, **table_kwargs("train")
    )

    checkpointer = ckpt.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        async_save=config.async_checkpointing,
    )
    config_dict = json.loads(config.to_json_best_effort())
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_dict, f, indent=2)

    with parallel.sharding_context(mesh, rules):
        start = checkpointer.latest_step()
        if start is not None:
            abstract = ckpt.abstract_like(step_lib.abstract_state(tx, param_shapes), shardings)
            state = checkpointer.restore(start, abstract, train_iter)
            log.info("resumed from %s at step %d", checkpointer.directory, start)
        else:
            start = 0
            if base is not None:
                params = lora_training.init_trainable(config, param_shapes, param_shardings)
                log.info("LoRA adapters over the frozen base from %s", config.init_from)
            else:
                _, params, _ = models.init_params(config.model, mesh, rules, config.seed)
            if config.init_from and base is None:
                params = ckpt.load_params(
                    config.init_from, param_shapes, param_shardings, fresh=params
                )
                added, unused = ckpt.checkpoint_diff(config.init_from, param_shapes)
                log.info("initialised parameters from %s", config.init_from)
                if added:
                    log.info("newly initialised (not in the checkpoint): %s", ", ".join(added))
                if unused:
                    log.info("checkpoint parameters not used: %s", ", ".join(unused))
            state = step_lib.init_state(tx, params, shardings)
        n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
        if base is None:
            log.info("model: %.2fM parameters", n_params / 1e6)
        else:
            n_total = n_params + sum(x.size for x in jax.tree.leaves(base))
            log.info(
                "model: %.2fM parameters, %.4fM (%.2f%%) of them trainable: LoRA %s",
                n_total / 1e6, n_params / 1e6, 100 * n_params / n_total,
                models.lora_settings(config.model),
            )  # fmt: skip

        first = next(train_iter)
        batch_sharding = step_lib.batch_shardings(first, mesh, rules)
        train_step = step_lib.jit_train_step(
            step_lib.make_train_step(objective, tx, schedule, config.optimizer.grad_accum_steps),
            shardings,
            batch_sharding,
            mesh,
            frozen_shardings,
        )
        eval_step = jax.jit(step_lib.make_eval_step(objective))
        base_rng = jax.random.key(config.seed)

        writer = metrics_lib.MetricsWriter(workdir, config.total_steps, start, config.progress_bar)
        peak = metrics_lib.peak_flops_per_device(config)
        throughput = metrics_lib.Throughput(
            models.train_flops_per_token(config.model, config.data.seq_len),
            peak * jax.device_count() if peak else None,
        )
        last_saved = start or None
        last_logged: dict = {}
        pending = None  # (step, metrics) not yet checked for a finite loss
        batch = first
        step = start
        try:
            while step < config.total_steps:
                global_batch = to_global_batch(batch, batch_sharding)
                rng = jax.random.fold_in(base_rng, step)
                state, step_metrics = train_step(state, global_batch, rng, frozen)
                throughput.add(objective.tokens_per_batch(batch) * jax.process_count())
                if pending is not None:
                    _check_finite(*pending, last_saved)
                step += 1
                pending = (step, step_metrics)
                writer.advance(step)

                if step == 1 or step % config.log_every == 0 or step == config.total_steps:
                    _check_finite(*pending, last_saved)
                    last_logged = {k: float(v) for k, v in step_metrics.items()}
                    writer.write(step, {**last_logged, **throughput.read()})
                if config.eval_every and (
                    step % config.eval_every == 0 or step == config.total_steps
                ):
                    eval_metrics = evaluate(
                        config,
                        objective,
                        eval_step,
                        data,
                        tokenizer,
                        eval_source,
                        state,
                        frozen,
                        table_kwargs("eval"),
                    )
                    if eval_metrics:
                        writer.write(step, eval_metrics, prefix="eval_")
                    throughput.reset()
                preempted = stop.set or (
                    jax.process_count() > 1 and checkpointer.reached_preemption(step)
                )
                should_save = step % config.checkpoint_every == 0 or step == config.total_steps
                if should_save or preempted:
                    _check_finite(*pending, last_saved)
                    checkpointer.save(step, state, train_iter, config_dict)
                    last_saved = step
                if preempted:
                    log.warning("stopped by signal after step %d; checkpoint saved", step)
                    break
                if step < config.total_steps:
                    batch = next(train_iter)
        finally:
            checkpointer.close()
            writer.close()
    return last_logged


def evaluate(
    config, objective, eval_step, data, tokenizer, source, state, frozen, data_kwargs
) -> dict:
    """Loss and perplexity over the held-out split (or its first `eval_steps` batches)."""
    if source is None:
        return {}
    loss_sum = denom = 0.0
    metric_sums: dict = {}
    it = data.make_eval_iterator(config.data, tokenizer, source=source, **data_kwargs)
    mesh, rules = parallel.current()
    for i, batch in enumerate(it):
        if config.eval_steps and i >= config.eval_steps:
            break
        batch_sharding = step_lib.batch_shardings(batch, mesh, rules)
        global_batch = to_global_batch(batch, batch_sharding)
        ls, dn, ms = eval_step(state["params"], global_batch, jax.random.key(0), frozen)
        loss_sum += float(ls)
        denom += float(dn)
        for k, (s, c) in ms.items():
            acc = metric_sums.setdefault(k, [0.0, 0.0])
            acc[0] += float(s)
            acc[1] += float(c)
    if denom == 0:
        return {}
    loss = loss_sum / denom
    out = {"loss": loss}
    if objective.reports_perplexity:
        out["perplexity"] = float(np.exp(min(loss, 80.0)))
    out.update({k: s / max(c, 1.0) for k, (s, c) in metric_sums.items()})
    return out


def _reference(
    config, objective, data, tokenizer, mesh, rules, workdir, shapes, shardings, sources,
    base=None,
):  # fmt: skip
    """The frozen reference's parameters, or (precompute_ref_logps) per-example reference
    log-probs of every train and eval record, computed once and cached in the workdir.

    A LoRA run passes its loaded `base`: the reference is that base unless
    `reference_from` names another model, which is then loaded (without adapters)."""
    path = config.objective.reference_from or config.init_from
    if not path:
        raise TrainingError(
            f"objective '{objective.name}' needs a reference model: set config.init_from "
            "(or config.objective.reference_from)"
        )
    with parallel.sharding_context(mesh, rules):
        if base is not None and os.path.abspath(path) == os.path.abspath(config.init_from):
            ref_params = base
        else:
            ref_params = ckpt.load_params(path, shapes, shardings)
        log.info("reference model from %s", path)
        if not config.objective.precompute_ref_logps:
            return ref_params, {}
        fn = jax.jit(
            lambda p, b: (*objective.reference_logps_fn(p, b), b["index"], b["valid"]),
            out_shardings=parallel.replicated(mesh),
        )
        tables = {}
        for split, source in sources.items():
            if source is None:
                continue
            cache = os.path.join(workdir, f"ref_logps_{split}.npy")
            key = {"reference": os.path.abspath(path), "records": len(source),
                   "files": list(source.paths)}  # fmt: skip
            if os.path.exists(cache) and os.path.exists(cache + ".json"):
                with open(cache + ".json") as f:
                    if json.load(f) == key:
                        tables[split] = np.load(cache)
                        log.info("reference log-probs (%s) from %s", split, cache)
                        continue
            table = np.zeros((len(source), 2), np.float32)
            for batch in data.make_eval_iterator(config.data, tokenizer, source=source):
                sh = step_lib.batch_shardings(batch, mesh, rules)
                c, r, index, valid = jax.device_get(
                    fn(ref_params, to_global_batch(batch, sh))
                )
                keep = valid > 0
                table[index[keep], 0], table[index[keep], 1] = c[keep], r[keep]
            if jax.process_index() == 0:
                np.save(cache, table)
                with open(cache + ".json", "w") as f:
                    json.dump(key, f)
            tables[split] = table
            log.info("reference log-probs (%s): %d records precomputed", split, len(source))
    return None, tables
