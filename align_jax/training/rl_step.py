"""The step of an online objective: one rollout batch in, `updates_per_step` updates out.

    rl_step(state, batch, rng, frozen) -> (state, metrics)

has the train step's signature (align_jax/training/step.py), so the loop runs either. It is
two jitted programs, timed apart (`time/reference`, `time/update`, seconds):

1. `objective.prepare_fn(params, frozen, batch, objective_state)` once, without gradient:
   log-probs at the rollout's parameters, the reference's, values, advantages
   (objectives/grpo.py, objectives/ppo.py), and the objective's next state (PPO's adaptive
   KL coefficient) when it has one;
2. a `lax.scan` over `num_iterations` passes, each a `lax.scan` over `num_minibatches`
   minibatches of the prepared batch, each minibatch one update of the ordinary train step
   (with its gradient accumulation). It donates the old state, as the train step does.

Minibatch i takes rows i::M (strided, as gradient accumulation's micro-batches: each
device's rows stay on it), in the same order every pass; verl's actor splits its batch
likewise without shuffling. One loop step is one rollout batch, so checkpoints fall on
rollout boundaries. `state["step"]` counts optimizer updates (what the learning-rate
schedule reads); the loop's step counts rollouts.

Metrics are averaged over the updates (`loss`, clip fractions, `grad_norm`, ...);
`param_norm` is the final parameters'.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from align_jax import parallel
from align_jax.objectives import Objective
from align_jax.training import step as step_lib


def make_rl_updates(objective: Objective, tx, schedule, grad_accum_steps: int = 1):
    """`updates(state, prepared_batch, rng, frozen) -> (state, metrics)`: the scanned
    passes and minibatches of step 2 above, unjitted."""
    update = step_lib.make_train_step(objective, tx, schedule, grad_accum_steps)
    minibatches = objective.num_minibatches
    passes = objective.updates_per_step // minibatches

    def updates(state, batch, rng, frozen):
        split = step_lib.split_micro(batch, minibatches)

        def one_pass(state, pass_rng):
            def one_update(state, xs):
                minibatch, update_rng = xs
                return update(state, minibatch, update_rng, frozen)

            return jax.lax.scan(one_update, state, (split, jax.random.split(pass_rng, minibatches)))

        state, metrics = jax.lax.scan(one_pass, state, jax.random.split(rng, passes))
        out = {k: jnp.mean(v) for k, v in metrics.items()}
        out["param_norm"] = metrics["param_norm"][-1, -1]
        return state, out

    return updates


class RLStep:
    """The jitted prepare and update programs of an online objective (see the module
    docstring), compiled at the first call, when the prepared batch's shapes are known."""

    def __init__(self, objective, tx, schedule, grad_accum_steps, shardings, batch_sharding,
                 mesh, rules, frozen_shardings):  # fmt: skip
        self._objective = objective
        self._updates = make_rl_updates(objective, tx, schedule, grad_accum_steps)
        self._shardings, self._batch_sharding = shardings, batch_sharding
        self._mesh, self._rules, self._frozen_shardings = mesh, rules, frozen_shardings
        self._prepare = self._update = None

    def lower(self, state, batch, rng, frozen) -> dict:
        """{"prepare": ..., "update": ..., "prepared": shapes}: both programs lowered for
        arguments of these shapes and shardings (`jax.ShapeDtypeStruct`s will do), for
        ahead-of-time compilation (align_jax/training/plan.py), and the prepared batch's
        shapes the update takes."""
        with parallel.sharding_context(self._mesh, self._rules):
            prepared = self._compile(state, batch, frozen)
            params, objective_state = state["params"], state.get("objective", {})
            return {
                "prepare": self._prepare.lower(params, frozen, batch, objective_state),
                "update": self._update.lower(state, prepared, rng, frozen),
                "prepared": prepared,
            }

    def _compile(self, state, batch, frozen) -> dict:
        """Builds the two jitted programs; returns the prepared batch's shapes."""
        rep = NamedSharding(self._mesh, PartitionSpec())
        objective_state = state.get("objective", {})
        prepared_shapes, _, _ = jax.eval_shape(
            self._objective.prepare_fn, state["params"], frozen, batch, objective_state
        )
        prepared_sharding = step_lib.batch_shardings(prepared_shapes, self._mesh, self._rules)
        state_sharding = self._shardings.get("objective", {})
        self._prepare = jax.jit(
            self._objective.prepare_fn,
            in_shardings=(
                self._shardings["params"],
                self._frozen_shardings,
                self._batch_sharding,
                state_sharding,
            ),  # fmt: skip
            out_shardings=(prepared_sharding, rep, state_sharding),
        )
        self._update = step_lib.jit_train_step(
            self._updates, self._shardings, prepared_sharding, self._mesh, self._frozen_shardings
        )
        return jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
            prepared_shapes,
            prepared_sharding,
        )

    def __call__(self, state, batch, rng, frozen):
        # Traced (first call) under the mesh's rules, so activation constraints apply.
        with parallel.sharding_context(self._mesh, self._rules):
            return self._run(state, batch, rng, frozen)

    def _run(self, state, batch, rng, frozen):
        if self._prepare is None:
            self._compile(state, batch, frozen)
        t0 = time.perf_counter()
        prepared, prepare_metrics, objective_state = self._prepare(
            state["params"], frozen, batch, state.get("objective", {})
        )
        if "objective" in state:
            state = {**state, "objective": objective_state}
        jax.block_until_ready(prepared)
        t1 = time.perf_counter()
        state, metrics = self._update(state, prepared, rng, frozen)
        jax.block_until_ready(metrics)
        t2 = time.perf_counter()
        metrics = {**prepare_metrics, **metrics}
        metrics["time/reference"] = t1 - t0
        metrics["time/update"] = t2 - t1
        return state, metrics
