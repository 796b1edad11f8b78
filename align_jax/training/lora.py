"""LoRA training: adapters in the train state, the frozen base beside them.

With `config.model.lora.rank > 0` the loop runs the usual train step with

    state["params"] = adapters + new heads (`loading.NEW_HEADS`): all the optimizer and
                      the checkpoints ever hold
    frozen          = {"base": the init_from parameters,
                       "reference": a separate reference model's, or None}

and the objective, wrapped by `wrap_objective`, still sees full parameter trees: the policy
is base ∪ adapters, and the reference (objectives that have one) is the base with zero
adapters, the same base arrays, so there is no second copy of the weights. Neither the
objectives nor the step know about LoRA. The base is reloaded from `config.init_from` on
every start, resume included.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax import loading
from align_jax.models import lora
from align_jax.models.transformer import Transformer
from align_jax.objectives import Objective


def split(tree: dict) -> tuple[dict, dict]:
    """(trainable: adapters and new heads, frozen base) of a tree keyed like the parameters."""
    return lora.split(tree, trainable_heads=loading.NEW_HEADS)


@dataclasses.dataclass(frozen=True)
class FrozenBase:
    """The frozen base model beside the trainable adapters: its parameters and layout."""

    params: dict
    shapes: dict
    shardings: dict


def split_base(config, shapes: dict, shardings: dict) -> tuple[dict, dict, FrozenBase]:
    """(trainable shapes, trainable shardings, the base loaded from `config.init_from`)."""
    shapes, base_shapes = split(shapes)
    shardings, base_shardings = split(shardings)
    base = load_base(config, base_shapes, base_shardings)
    return shapes, shardings, FrozenBase(base, base_shapes, base_shardings)


def frozen_inputs(base: FrozenBase, reference: dict | None) -> tuple[dict, dict]:
    """The step's `frozen` argument and its shardings: the base, and the reference when it is
    a separate model (None when the reference is the base itself, or precomputed)."""
    separate = reference is not None and reference is not base.params
    return (
        {"base": base.params, "reference": reference if separate else None},
        {"base": base.shardings, "reference": base.shardings if separate else None},
    )


def policy_params(trainable: dict, frozen: dict) -> dict:
    """The policy's full parameters (base ∪ adapters) from the step's arguments: what the
    online sampler runs."""
    return lora.join(frozen["base"], trainable)


def load_base(config, shapes: dict, shardings: dict) -> dict:
    """The frozen base: `config.init_from`, which a LoRA run requires (adapters over a random
    base are almost always a forgotten flag, and the run could not be reloaded without it)."""
    if not config.init_from:
        raise ValueError(
            "config.model.lora.rank > 0 trains adapters over a frozen base: set "
            "config.init_from to the base model's run or checkpoint"
        )
    return loading.load_params(config.init_from, shapes, shardings)


def init_trainable(config, shapes: dict, shardings: dict) -> dict:
    """Fresh adapters (B = 0) and heads, the values `models.init_params` would draw for them
    (jit drops the base's initialisers, whose outputs are unused). A head that
    `config.init_from` already has (LoRA on a trained reward model) continues from it."""

    def init():
        state = nnx.state(Transformer(config.model, rngs=nnx.Rngs(config.seed)))
        return split(nnx.to_pure_dict(state))[0]

    params = jax.jit(init, out_shardings=shardings)()
    heads = {k: shapes[k] for k in loading.NEW_HEADS if k in shapes}
    if heads:
        added = {name.split("/")[0] for name in loading.checkpoint_diff(config.init_from, heads)[0]}
        kept = {k: v for k, v in heads.items() if k not in added}
        if kept:
            stored = loading.load_params(config.init_from, kept, {k: shardings[k] for k in kept})
            params.update(stored)
    return params


def wrap_objective(objective: Objective, trainable_shapes: dict) -> Objective:
    """The objective over (trainable, frozen = {"base", "reference"}) instead of full trees;
    the wrapped objective sees the full policy and `{"reference": ...}` when it has one."""

    def reference(ref_base):
        # Zero adapters make every projection its kernel alone, exactly; a new head has no
        # counterpart in the reference model and is zero too (no reference objective reads it).
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), trainable_shapes)
        return lora.join(ref_base, zeros)

    def inner(trainable, frozen):
        """(the policy's full parameters, the objective's own `frozen` dict)."""
        models = {}
        if objective.needs_reference:
            separate = frozen["reference"]
            models["reference"] = reference(frozen["base"] if separate is None else separate)
        return lora.join(frozen["base"], trainable), models

    def loss_fn(trainable, frozen, batch, rng):
        return objective.loss_fn(*inner(trainable, frozen), batch, rng)

    def prepare_fn(trainable, frozen, batch, objective_state):
        return objective.prepare_fn(*inner(trainable, frozen), batch, objective_state)

    ref_logps = objective.reference_logps_fn
    return dataclasses.replace(
        objective,
        loss_fn=loss_fn,
        prepare_fn=prepare_fn if objective.online else None,
        reference_logps_fn=ref_logps and (lambda ref_base, b: ref_logps(reference(ref_base), b)),
    )
