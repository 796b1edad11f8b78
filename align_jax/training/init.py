"""The train state a run starts from.

A workdir with checkpoints resumes from the latest one that reads back whole (parameters,
optimizer state, data position; the RNG follows from the step). Otherwise the parameters are
initialised from `config.seed`, then taken from `config.init_from` where it has them: a new
head (a reward model's score head on an SFT backbone) keeps its fresh values, and the log
names what was added and what went unused. A LoRA run starts fresh adapters (and heads)
over its base. With a value model (PPO) the trained parameters are `{"policy", "value"}`;
the value model starts from `ValueModel.init_from` the same way: a reward model's scalar
head is restored, an SFT model's LM head goes unused and a new scalar head is initialised.
"""

from __future__ import annotations

import logging

from align_jax import loading, models
from align_jax.checkpoint import Checkpointer, DamagedCheckpoint, abstract_like
from align_jax.objectives import ValueModel
from align_jax.training import lora as lora_training
from align_jax.training import step as step_lib
from align_jax.training.errors import TrainingError
from align_jax.training.optimizer import make_optimizer, per_model

log = logging.getLogger("align_jax")


def trained_models(config, objective, param_shapes, param_shardings, mesh, rules, *, lora: bool):
    """(shapes, shardings, tx, schedule) of the trained parameters: the policy's, or with a
    value model (PPO) `{"policy", "value"}` with one optimizer each (the value model's at its
    own learning rate). An online step makes `updates_per_step` optimizer updates: the
    schedules count those."""
    total = config.total_steps * objective.updates_per_step
    tx, schedule = make_optimizer(config.optimizer, total)
    value = objective.value_model
    if value is None:
        return param_shapes, param_shardings, tx, schedule
    if lora:
        raise TrainingError(
            f"objective '{objective.name}' trains a value model beside the policy, which "
            "LoRA does not support yet: set config.model.lora.rank=0"
        )
    _, value_shapes, value_axes = models.abstract_params(value.model)
    value_opt = config.optimizer.copy_and_resolve_references()
    value_opt.learning_rate = value.learning_rate
    txs = {"policy": tx, "value": make_optimizer(value_opt, total)[0]}
    shapes = {"policy": param_shapes, "value": value_shapes}
    shardings = {
        "policy": param_shardings,
        "value": models.param_shardings(value_shapes, value_axes, mesh, rules),
    }
    return shapes, shardings, per_model(txs), schedule


def resume_or_init(
    config, checkpointer: Checkpointer, tx, shapes, shardings, state_shardings, train_iter,
    mesh, rules, *, lora: bool, value_model: ValueModel | None = None,
    objective_state: dict | None = None,
) -> tuple[dict, int]:  # fmt: skip
    """(train state, its step): the latest checkpoint's (`train_iter` restored in place),
    or step 0's. `shapes`, `shardings`: the trained parameters' (a LoRA run's adapters;
    `{"policy", "value"}` with a `value_model`); `objective_state`: the objective's
    initial state, if it has one."""
    if checkpointer.all_steps():
        abstract = step_lib.abstract_state(tx, shapes, objective_state)
        abstract = abstract_like(abstract, state_shardings)
        return _restore_newest_readable(checkpointer, abstract, train_iter)
    if value_model is None:
        params = initial_params(config, shapes, shardings, mesh, rules, lora=lora)
    else:
        params = {
            "policy": initial_params(
                config, shapes["policy"], shardings["policy"], mesh, rules, lora=lora
            ),
            "value": initial_value_params(
                config, value_model, shapes["value"], shardings["value"], mesh, rules
            ),
        }
    return step_lib.init_state(tx, params, state_shardings, objective_state), 0


def _restore_newest_readable(checkpointer: Checkpointer, abstract, train_iter):
    """The newest checkpoint that reads back whole. Damaged newer ones are reported (step,
    item, reason) and, once an older one has restored, moved untouched aside so the run can
    write those steps again; with none readable the run stops and moves nothing."""
    damaged = []
    for step in reversed(checkpointer.all_steps()):
        try:
            state = checkpointer.restore(step, abstract, train_iter)
        except DamagedCheckpoint as e:
            log.warning("damaged checkpoint: %s", e)
            damaged.append(step)
            continue
        for bad in damaged:
            where = checkpointer.set_aside(bad)
            log.warning("checkpoint step %d kept for inspection, untouched, in %s", bad, where)
        if damaged:
            log.warning("resuming from step %d, the newest checkpoint that reads back whole", step)
        log.info("resumed from %s at step %d", checkpointer.directory, step)
        return state, step
    raise TrainingError(
        f"no checkpoint in {checkpointer.directory} reads back whole (damaged: steps "
        f"{', '.join(map(str, damaged))}; the log names each reason); they are left "
        "as they are: move them away to start afresh, or use another --workdir"
    )


def initial_params(config, shapes, shardings, mesh, rules, *, lora: bool) -> dict:
    """Step 0's trained parameters (see the module docstring)."""
    if lora:
        params = lora_training.init_trainable(config, shapes, shardings)
        log.info("LoRA adapters over the frozen base from %s", config.init_from)
        return params
    _, params, _ = models.init_params(config.model, mesh, rules, config.seed)
    if config.init_from:
        params = load_init_from(config.init_from, shapes, shardings, fresh=params)
    return params


def initial_value_params(config, value_model: ValueModel, shapes, shardings, mesh, rules):
    """Step 0's value-model parameters: `value_model.init_from`'s, a new scalar head (seeded
    from `config.seed + 1`) where it has none."""
    _, fresh, _ = models.init_params(value_model.model, mesh, rules, config.seed + 1)
    if not value_model.init_from:
        log.info("value model initialised from config.seed (no reward model or init_from)")
        return fresh
    return load_init_from(value_model.init_from, shapes, shardings, fresh=fresh, what="value model")


def load_init_from(path: str, shapes, shardings, *, fresh: dict, what: str = "parameters") -> dict:
    """`path`'s parameters, new heads from `fresh`; logs what was added and what went unused
    (`what`: the model's name in those lines)."""
    params = loading.load_params(path, shapes, shardings, fresh=fresh)
    added, unused = loading.checkpoint_diff(path, shapes)
    log.info("initialised %s from %s", what, path)
    if added:
        log.info("%s: newly initialised (not in the checkpoint): %s", what, ", ".join(added))
    if unused:
        log.info("%s: checkpoint parameters not used: %s", what, ", ".join(unused))
    return params
