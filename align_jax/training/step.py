"""The pure-functional train and eval steps, and the shardings of the train state.

State is a plain dict `{"step", "params", "opt_state"}`, plus `"objective"` for an objective
with state of its own (PPO's adaptive KL coefficient: `Objective.initial_state`). Frozen
models (a reference policy, a reward model) travel as a separate argument that the step
never updates.

    train_step(state, batch, rng, frozen) -> (state, metrics)

is jitted with explicit in/out shardings and donates the old state. Gradient accumulation
runs inside the step as a `lax.scan` over micro-batches: summed losses, counts and gradients
are added up and divided once at the end, so `grad_accum_steps=k` gives the same update as
one batch k times larger.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from align_jax import parallel
from align_jax.objectives import Objective
from align_jax.objectives.common import split_rows
from align_jax.training.optimizer import PerModel


def opt_state_shardings(tx, param_shapes: dict, param_shardings: dict, mesh):
    """Optimizer-state leaves shaped like their parameter share its sharding; others replicate.

    (Propagating through `jit(tx.init)` would leave `zeros_like` buffers replicated.)
    """
    if isinstance(tx, PerModel):  # one optimizer per trained model (PPO's policy and value)
        return {
            name: opt_state_shardings(part, param_shapes[name], param_shardings[name], mesh)
            for name, part in tx.txs.items()
        }
    opt_shapes = jax.eval_shape(tx.init, param_shapes)
    replicated = parallel.replicated(mesh)

    def pick(leaf, shape, sharding):
        return sharding if getattr(leaf, "shape", None) == shape.shape else replicated

    return optax.tree_map_params(
        tx,
        pick,
        opt_shapes,
        param_shapes,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )


def state_shardings(tx, param_shapes, param_shardings, mesh, objective_state=None) -> dict:
    """`objective_state`: the objective's initial state (`Objective.initial_state()`), if any;
    its scalars are replicated."""
    out = {
        "step": parallel.replicated(mesh),
        "params": param_shardings,
        "opt_state": opt_state_shardings(tx, param_shapes, param_shardings, mesh),
    }
    if objective_state is not None:
        out["objective"] = jax.tree.map(lambda _: parallel.replicated(mesh), objective_state)
    return out


def abstract_state(tx, param_shapes: dict, objective_state=None) -> dict:
    out = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": param_shapes,
        "opt_state": jax.eval_shape(tx.init, param_shapes),
    }
    if objective_state is not None:
        out["objective"] = jax.eval_shape(lambda: objective_state)
    return out


def init_state(tx, params, shardings: dict, objective_state=None) -> dict:
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
    out = {"step": step, "params": params, "opt_state": opt_state}
    if objective_state is not None:
        out["objective"] = jax.device_put(objective_state, shardings["objective"])
    return out


def batch_shardings(batch_shapes: dict, mesh, rules) -> dict:
    """Every batch field is [B, ...]: split B over the batch axes, replicate the rest."""
    return {
        k: parallel.named_sharding(("batch",) + (None,) * (len(v.shape) - 1), v.shape, mesh, rules)
        for k, v in batch_shapes.items()
    }


def split_micro(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B/k, ...] taking rows i::k into micro-batch i (`split_rows`: every
    device's share of each micro-batch stays on that device, so the scan moves no data)."""
    for x in jax.tree.leaves(batch):
        if x.shape[0] % k:
            raise ValueError(
                f"config.optimizer.grad_accum_steps={k} does not divide the batch size {x.shape[0]}"
            )
    return split_rows(batch, k)


def _sum_pairs(a: dict, b: dict) -> dict:
    return {k: (a[k][0] + b[k][0], a[k][1] + b[k][1]) for k in a}


def make_train_step(
    objective: Objective, tx, schedule: Callable, grad_accum_steps: int = 1
) -> Callable:
    grad_fn = jax.value_and_grad(objective.loss_fn, has_aux=True)

    def step(state, batch, rng, frozen):
        params = state["params"]

        def one(micro_batch, micro_rng):
            (loss_sum, (denom, metrics)), grads = grad_fn(params, frozen, micro_batch, micro_rng)
            cast = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
            metrics = {k: (cast(s), cast(c)) for k, (s, c) in metrics.items()}
            return grads, cast(loss_sum), cast(denom), metrics

        if grad_accum_steps == 1:
            grads, loss_sum, denom, metrics = one(batch, rng)
        else:
            micro = split_micro(batch, grad_accum_steps)
            rngs = jax.random.split(rng, grad_accum_steps)
            first = jax.tree.map(lambda x: x[0], micro)
            init = jax.tree.map(jnp.zeros_like, jax.eval_shape(one, first, rngs[0]))

            def body(acc, xs):
                out = one(*xs)
                acc_grads, acc_loss, acc_denom, acc_metrics = acc
                return (
                    jax.tree.map(jnp.add, acc_grads, out[0]),
                    acc_loss + out[1],
                    acc_denom + out[2],
                    _sum_pairs(acc_metrics, out[3]),
                ), None

            (grads, loss_sum, denom, metrics), _ = jax.lax.scan(body, init, (micro, rngs))

        scale = 1.0 / jnp.maximum(denom, 1.0)
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {
            **state,
            "step": state["step"] + 1,
            "params": new_params,
            "opt_state": opt_state,
        }
        out = {k: s / jnp.maximum(c, 1.0) for k, (s, c) in metrics.items()}
        out.update(
            loss=loss_sum * scale,
            grad_norm=optax.tree.norm(grads),
            update_norm=optax.tree.norm(updates),
            # Non-finite exactly when some parameter is (or overflows float32 when squared):
            # the loop refuses to checkpoint such a state.
            param_norm=optax.tree.norm(new_params),
            learning_rate=jnp.asarray(schedule(state["step"]), jnp.float32),
        )
        return new_state, out

    return step


def make_eval_step(objective: Objective) -> Callable:
    """Summed loss, count and metric sums of one batch; the caller adds them up over the split."""

    def step(params, batch, rng, frozen):
        loss_sum, (denom, metrics) = objective.loss_fn(params, frozen, batch, rng)
        return loss_sum, denom, metrics

    return step


def jit_train_step(step_fn, shardings: dict, batch_sharding: dict, mesh, frozen_shardings=None):
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding, rep, frozen_shardings),
        out_shardings=(shardings, rep),
        donate_argnums=0,
    )
