"""Objectives, registered by name: `config.objective.name` picks one, `loss_type` its variant.

An objective turns a batch into a summed loss and the count it is to be divided by:

    loss_fn(params, frozen, batch, rng) -> (loss_sum, (denom, metric_sums))

with `metric_sums` a dict `name -> (sum, count)`. The train step adds sums and counts over
micro-batches and divides once, so gradient accumulation equals one big batch exactly
(docs/architecture.md). An objective knows nothing about how batches are produced
(`batch_kind` names the data pipeline it expects) nor about the loop.

Each objective owns its `config.objective` keys: `defaults(name)` returns them (`name`,
`loss_type` and that objective's knobs only), and `config_for(name)` a whole run config,
`align_jax.config.base_config()` with them, which is where every config file starts.
"""

from __future__ import annotations

import ml_collections

from align_jax.config import base_config

# Imported for their registrations.
from align_jax.objectives import (  # noqa: F401
    dpo,
    grpo,
    kto,
    listwise,
    online_dpo,
    ppo,
    pretrain,
    reference_free,
    reward,
)
from align_jax.objectives.base import REGISTRY, Objective, ValueModel, register

__all__ = ["Objective", "ValueModel", "build", "config_for", "defaults", "names", "register"]


def names() -> list[str]:
    return sorted(REGISTRY)


def _registration(name: str):
    if name not in REGISTRY:
        raise ValueError(f"config.objective.name '{name}' is unknown; valid objectives: {names()}")
    return REGISTRY[name]


def defaults(name: str) -> ml_collections.ConfigDict:
    """Objective `name`'s `config.objective` keys with their default values."""
    return _registration(name).defaults()


def config_for(name: str) -> ml_collections.ConfigDict:
    """The run config of objective `name`: `base_config()` with `defaults(name)` as
    `config.objective` and the objective's other sections (online RL's `rollout`,
    `rewards`), unlocked (the command line locks it)."""
    c = base_config()
    c.objective = defaults(name)
    sections = _registration(name).sections
    for key, value in (sections() if sections else {}).items():
        c[key] = value
    return c


def build(config, graphdef) -> Objective:
    """The objective `config.objective` names, after checking its keys and loss type."""
    o = config.objective
    name = o.name
    reg = _registration(name)
    expected, got = set(reg.defaults()), set(o)
    if expected != got:
        raise ValueError(
            f"config.objective does not hold the keys of objective '{name}': missing "
            f"{sorted(expected - got)}, not used by it {sorted(got - expected)}; start the "
            f"config from align_jax.objectives.config_for('{name}')"
        )
    if reg.loss_types is not None and o.loss_type not in reg.loss_types:
        raise ValueError(
            f"config.objective.loss_type '{o.loss_type}' is not valid for "
            f"objective '{name}'; valid loss types: {list(reg.loss_types)}"
        )
    return reg.builder(config, graphdef)
