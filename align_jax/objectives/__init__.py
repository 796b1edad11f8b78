"""Objectives, registered by name: `config.objective.name` picks one, `loss_type` its variant.

An objective turns a batch into a summed loss and the count it is to be divided by:

    loss_fn(params, frozen, batch, rng) -> (loss_sum, (denom, metric_sums))

with `metric_sums` a dict `name -> (sum, count)`. The train step adds sums and counts over
micro-batches and divides once, so gradient accumulation equals one big batch exactly
(REFERENCES.md). An objective knows nothing about how batches are produced (`batch_kind`
names the data pipeline it expects) nor about the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

LossFn = Callable[[Any, Any, dict, Any], tuple]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    loss_fn: LossFn
    batch_kind: str  # which data pipeline feeds it, e.g. "tokens"
    # Tokens in a batch, for throughput: a function of the batch's shapes.
    tokens_per_batch: Callable[[dict], int]
    # Its loss is a per-token negative log-likelihood, so eval reports exp(loss).
    reports_perplexity: bool = False
    # A frozen reference model (DPO, PPO, GRPO with beta > 0) comes in as `frozen`.
    needs_reference: bool = False
    # (ref_params, batch) -> per-example reference log-probs, for precomputing them once.
    reference_logps_fn: Callable | None = None


_BUILDERS: dict[str, tuple[Callable[..., Objective], tuple[str, ...] | None]] = {}


def register(name: str, loss_types: tuple[str, ...] | None):
    """Registers `builder(config, graphdef) -> Objective` under `name`.

    `loss_types` lists the valid `config.objective.loss_type` values; None leaves the check
    to the builder (DPO accepts comma-joined combinations)."""

    def wrap(builder):
        _BUILDERS[name] = (builder, loss_types)
        return builder

    return wrap


def build(config, graphdef) -> Objective:
    # Import for the registration side effect; objectives live in this package.
    from align_jax.objectives import dpo, kto, listwise, pretrain, reference_free, reward  # noqa: F401

    name = config.objective.name
    if name not in _BUILDERS:
        raise ValueError(
            f"config.objective.name '{name}' is unknown; valid objectives: {sorted(_BUILDERS)}"
        )
    builder, loss_types = _BUILDERS[name]
    if loss_types is not None and config.objective.loss_type not in loss_types:
        raise ValueError(
            f"config.objective.loss_type '{config.objective.loss_type}' is not valid for "
            f"objective '{name}'; valid loss types: {list(loss_types)}"
        )
    return builder(config, graphdef)
