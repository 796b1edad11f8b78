"""The training loop: batch -> step -> metrics -> eval -> checkpoint.

It does not know which objective it runs. What it guarantees:
- Running again in a workdir with checkpoints resumes from the latest one, data position
  and RNG included, so a stopped-and-resumed run logs the same metrics as an uninterrupted one.
- SIGTERM (how TPU VMs are preempted) or a first Ctrl-C finishes the step, saves a checkpoint
  and stops with `Interrupted` (one line: where it saved, how to resume); a second Ctrl-C
  exits at once, leaving the committed checkpoints as they were.
- A damaged checkpoint is reported, set aside and skipped on resume (training/init.py).
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
import sys

import jax
import numpy as np

from align_jax import checkpoint as ckpt
from align_jax import models, objectives, parallel
from align_jax.data.pipeline import to_global_batch
from align_jax.data.tokenizer import Tokenizer
from align_jax.interop import hf_config
from align_jax.training import init as init_lib
from align_jax.training import lora as lora_training
from align_jax.training import metrics as metrics_lib
from align_jax.training import reference, wandb_log
from align_jax.training import sources as sources_lib
from align_jax.training import step as step_lib
from align_jax.training.errors import Interrupted, TrainingError
from align_jax.training.rl_step import RLStep

log = logging.getLogger("align_jax")


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
    """Set by SIGTERM (how TPU VMs are preempted) or the first Ctrl-C (SIGINT); the loop
    checks it after each step, saves a checkpoint and stops. A second Ctrl-C exits at once,
    without saving: Orbax commits a step by renaming its finished temporary folder, so the
    checkpoints already committed stay as they were and a half-written one is ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.last_saved: int | None = None  # named by the message of a second Ctrl-C
        self._previous: dict = {}

    @property
    def set(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum is not None:
            kept = (
                f"the checkpoints up to step {self.last_saved} are intact"
                if self.last_saved
                else "no checkpoint had been saved"
            )
            sys.stderr.write(f"\ninterrupted again: exiting without saving; {kept}\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        if signum == signal.SIGINT:
            log.warning(
                "Ctrl-C: finishing this step, then saving a checkpoint and exiting "
                "(Ctrl-C again to exit at once without saving)"
            )
        else:
            log.warning("received %s: saving a checkpoint and exiting", signal.Signals(signum).name)

    def __enter__(self):
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


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
    with workdir_lock(workdir), _StopFlag() as stop, contextlib.ExitStack() as cleanup:
        return _train(config, workdir, stop, cleanup)


def _train(config, workdir: str, stop: _StopFlag, cleanup: contextlib.ExitStack) -> dict:
    wandb_log.check(config.wandb)  # a missing package fails here, before anything slow
    mesh = parallel.make_mesh(config.mesh)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
    _model_config_from_hf(config)
    tokenizer = _load_tokenizer(config)

    graphdef, param_shapes, param_axes = models.abstract_params(config.model)
    param_shardings = models.param_shardings(param_shapes, param_axes, mesh, rules)
    objective = objectives.build(config, graphdef)
    base = None
    if models.lora_settings(config.model) is not None:
        # Only adapters (and new heads) train and are checkpointed; the base travels in the
        # step's `frozen` argument (align_jax/training/lora.py).
        param_shapes, param_shardings, base = lora_training.split_base(
            config, param_shapes, param_shardings
        )
        objective = lora_training.wrap_objective(objective, param_shapes)
    policy_shapes, policy_shardings = param_shapes, param_shardings
    param_shapes, param_shardings, tx, schedule = init_lib.trained_models(
        config, objective, param_shapes, param_shardings, mesh, rules, lora=base is not None
    )
    objective_state = objective.initial_state() if objective.initial_state else None
    shardings = step_lib.state_shardings(tx, param_shapes, param_shardings, mesh, objective_state)

    data = sources_lib.DATA_PIPELINES[objective.batch_kind]
    sources = sources_lib.load_sources(config, data, tokenizer)
    frozen, frozen_shardings, ref_tables = _frozen_inputs(
        config, objective, data, tokenizer, mesh, rules, workdir,
        policy_shapes, policy_shardings, base, sources,
    )  # fmt: skip
    table_kwargs = lambda split: {"ref_table": ref_tables[split]} if ref_tables else {}  # noqa: E731
    source = sources_lib.make_source(
        config, objective, data, tokenizer, sources, ref_tables, graphdef, mesh, rules
    )
    cleanup.enter_context(contextlib.closing(source))  # an online source's reward workers
    if base is not None:
        policy = lambda p: lora_training.policy_params(p, frozen)  # noqa: E731
    elif objective.value_model is not None:
        policy = lambda p: p["policy"]  # noqa: E731
    else:
        policy = lambda p: p  # noqa: E731

    checkpointer = ckpt.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        async_save=config.async_checkpointing,
    )
    config_dict = _write_config(config, workdir)

    with parallel.sharding_context(mesh, rules):
        state, start = init_lib.resume_or_init(
            config, checkpointer, tx, param_shapes, param_shardings, shardings,
            source.checkpoint_item, mesh, rules, lora=base is not None,
            value_model=objective.value_model, objective_state=objective_state,
        )  # fmt: skip
        _log_model_size(config, state["params"], base)

        batch_sharding = step_lib.batch_shardings(source.shapes, mesh, rules)
        grad_accum = config.optimizer.grad_accum_steps
        if objective.online:
            train_step = RLStep(
                objective, tx, schedule, grad_accum, shardings, batch_sharding, mesh, rules,
                frozen_shardings,
            )  # fmt: skip
        else:
            train_step = step_lib.jit_train_step(
                step_lib.make_train_step(objective, tx, schedule, grad_accum),
                shardings,
                batch_sharding,
                mesh,
                frozen_shardings,
            )
        eval_step = jax.jit(step_lib.make_eval_step(objective))
        base_rng = jax.random.key(config.seed)

        writer = metrics_lib.MetricsWriter(
            workdir, config.total_steps, start, config.progress_bar,
            wandb=wandb_log.start(config.wandb, config_dict, workdir, start),
        )  # fmt: skip
        # Closed however the run ends: the W&B run's state follows the error, if any.
        cleanup.push(lambda _type, error, _tb: writer.close(error))
        source.start(start, writer)
        peak = metrics_lib.peak_flops_per_device(config)
        throughput = metrics_lib.Throughput(
            models.train_flops_per_token(config.model, config.data.seq_len),
            peak * jax.device_count() if peak else None,
        )
        stop.last_saved = start or None  # also what a second Ctrl-C's message names
        last_logged: dict = {}
        pending = None  # (step, metrics) not yet checked for a finite loss
        step = start

        def run_eval(at: int) -> None:
            if source.evaluate is not None:
                eval_metrics = source.evaluate(policy(state["params"]))
            else:
                eval_metrics = evaluate(
                    config, objective, eval_step, data, tokenizer, sources["eval"],
                    state, frozen, table_kwargs("eval"),
                )  # fmt: skip
            if eval_metrics:
                writer.write(at, eval_metrics, prefix="eval_")
            throughput.reset()

        try:
            if config.eval_every and config.eval_at_start and start == 0:
                run_eval(0)
            while step < config.total_steps:
                # The live parameters, before the step donates them: an online source
                # samples the policy it is about to update.
                batch, host_metrics = source.next(policy(state["params"]), step)
                global_batch = to_global_batch(batch, batch_sharding)
                rng = jax.random.fold_in(base_rng, step)
                state, step_metrics = train_step(state, global_batch, rng, frozen)
                throughput.add(objective.tokens_per_batch(batch) * jax.process_count())
                if pending is not None:
                    _check_finite(*pending, stop.last_saved)
                step += 1
                pending = (step, step_metrics)
                writer.advance(step)

                if step == 1 or step % config.log_every == 0 or step == config.total_steps:
                    _check_finite(*pending, stop.last_saved)
                    last_logged = {k: float(v) for k, v in step_metrics.items()}
                    last_logged.update(host_metrics)
                    writer.write(step, {**last_logged, **throughput.read()})
                if config.eval_every and (
                    step % config.eval_every == 0 or step == config.total_steps
                ):
                    run_eval(step)
                preempted = stop.set or (
                    jax.process_count() > 1 and checkpointer.reached_preemption(step)
                )
                should_save = step % config.checkpoint_every == 0 or step == config.total_steps
                if should_save or preempted:
                    _check_finite(*pending, stop.last_saved)
                    checkpointer.save(step, state, source.checkpoint_item, config_dict)
                    stop.last_saved = step
                if preempted:
                    checkpointer.close()  # the save is complete before we say so
                    raise _interrupted(stop.signum or signal.SIGTERM, step, checkpointer)
        finally:
            checkpointer.close()
    return last_logged


def _interrupted(signum: int, step: int, checkpointer) -> Interrupted:
    how = "Ctrl-C" if signum == signal.SIGINT else f"signal {signal.Signals(signum).name}"
    return Interrupted(
        f"stopped by {how} after step {step}; checkpoint saved in "
        f"{checkpointer.directory}/{step}; run the same command again to resume",
        signum,
    )


def _model_config_from_hf(config) -> None:
    """A Hugging Face `init_from` defines the architecture; the config keeps dtypes, remat."""
    if config.init_from and hf_config.is_hf_dir(config.init_from):
        hf = hf_config.read_hf_config(config.init_from)
        with config.unlocked():
            config.model = hf_config.model_config_from_hf(hf, config.init_from, like=config.model)
        log.info("config.model from %s/config.json (%s)", config.init_from, hf["model_type"])


def _load_tokenizer(config) -> Tokenizer:
    tokenizer = Tokenizer.load(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise TrainingError(
            f"config.model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ({config.data.tokenizer})"
        )
    return tokenizer


def _frozen_inputs(
    config, objective, data, tokenizer, mesh, rules, workdir, param_shapes, param_shardings,
    base, sources,
):  # fmt: skip
    """(the step's `frozen` argument, its shardings, {split: precomputed reference table}):
    the named frozen models the objective declares (`{"reference": ...}`) and a LoRA run's
    base, or None when there are none."""
    frozen, frozen_shardings, ref_tables = {}, {}, {}
    if objective.needs_reference:
        ref_shapes, ref_shardings = (
            (param_shapes, param_shardings) if base is None else (base.shapes, base.shardings)
        )
        reference_params, ref_tables = reference.load(
            config, objective, data, tokenizer, mesh, rules, workdir, ref_shapes, ref_shardings,
            sources, None if base is None else base.params,
        )  # fmt: skip
        if reference_params is not None:
            frozen["reference"], frozen_shardings["reference"] = reference_params, ref_shardings
    if base is not None:
        frozen, frozen_shardings = lora_training.frozen_inputs(base, frozen.get("reference"))
    return frozen or None, frozen_shardings or None, ref_tables


def _write_config(config, workdir: str) -> dict:
    """The resolved config, as the checkpoints store it; written to workdir/config.json."""
    config_dict = json.loads(config.to_json_best_effort())
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_dict, f, indent=2)
    return config_dict


def _log_model_size(config, params: dict, base) -> None:
    n_params = sum(x.size for x in jax.tree.leaves(params))
    if base is None:
        log.info("model: %.2fM parameters", n_params / 1e6)
        return
    n_total = n_params + sum(x.size for x in jax.tree.leaves(base.params))
    log.info(
        "model: %.2fM parameters, %.4fM (%.2f%%) of them trainable: LoRA %s",
        n_total / 1e6, n_params / 1e6, 100 * n_params / n_total,
        models.lora_settings(config.model),
    )  # fmt: skip


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
