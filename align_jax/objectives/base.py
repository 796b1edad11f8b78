"""The objective contract and the registry objectives join by name.

An objective module registers `builder(config, graphdef) -> Objective` with
`@register(name, loss_types=..., defaults=...)`; `defaults()` returns the objective's own
`config.objective` keys (`name`, `loss_type` and its knobs), so a run's config holds those
and nothing of other objectives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

LossFn = Callable[[Any, Any, dict, Any], tuple]

# Tokens in a batch of each data pipeline (`Objective.batch_kind`), from its shapes: what
# throughput counts. A pair row and a list row each hold their own padded sequence.
BATCH_TOKENS: dict[str, Callable[[dict], int]] = {
    "tokens": lambda batch: batch["inputs"].size,
    "sft": lambda batch: batch["inputs"].size,
    "pairs": lambda batch: batch["chosen_tokens"].size + batch["rejected_tokens"].size,
    "lists": lambda batch: batch["tokens"].size,
    "unpaired": lambda batch: batch["tokens"].size,
    "rollouts": lambda batch: batch["tokens"].size,
}


@dataclasses.dataclass(frozen=True)
class ValueModel:
    """A model trained beside the policy with a scalar head (PPO's value model)."""

    model: Any  # its config.model: the policy's architecture with head="scalar"
    init_from: str  # a run (reward model, SFT model) or Hugging Face dir its parameters start from
    learning_rate: float  # its optimizer is config.optimizer with this learning rate


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    loss_fn: LossFn
    batch_kind: str  # which data pipeline feeds it: a key of BATCH_TOKENS
    # Its loss is a per-token negative log-likelihood, so eval reports exp(loss).
    reports_perplexity: bool = False
    # The frozen models the loss reads, by name, from the step's `frozen` dict: "reference"
    # (DPO family, GRPO with beta > 0). Nothing else is loaded.
    frozen_models: tuple[str, ...] = ()
    # (ref_params, batch) -> per-example reference log-probs, for precomputing them once.
    reference_logps_fn: Callable | None = None
    # Online objectives (batch_kind "rollouts"): `prepare_fn(params, frozen, batch,
    # objective_state) -> (batch, metrics, objective_state)` runs once per rollout batch
    # without gradient (old and reference log-probs, advantages); then `updates_per_step`
    # optimizer updates, over `num_minibatches` minibatches per pass
    # (align_jax/training/rl_step.py).
    prepare_fn: Callable | None = None
    updates_per_step: int = 1
    num_minibatches: int = 1
    # The model forwards `prepare_fn` runs, counted in passes of the policy over the whole
    # rollout batch (GRPO: old and reference log-probs; PPO: policy, reference and value
    # model): what the memory planner counts as the prepare program's model FLOPs.
    prepare_forwards: float = 0.0
    # State of the objective's own that is not a trained parameter (PPO's adaptive KL
    # coefficient): `initial_state() -> {name: scalar array}`. It lives in the train state as
    # `state["objective"]`, is checkpointed with it, and only `prepare_fn` changes it.
    initial_state: Callable[[], dict] | None = None
    # A value model trained beside the policy (PPO). The trained parameters are then
    # `{"policy": ..., "value": ...}`, each with its own optimizer state, and the loss reads
    # both (the loop sets them up: align_jax/training/init.py).
    value_model: ValueModel | None = None

    @property
    def needs_reference(self) -> bool:
        return "reference" in self.frozen_models

    @property
    def online(self) -> bool:
        return self.prepare_fn is not None

    def tokens_per_batch(self, batch: dict) -> int:
        return int(BATCH_TOKENS[self.batch_kind](batch))


@dataclasses.dataclass(frozen=True)
class Registration:
    builder: Callable[..., Objective]
    # Valid `config.objective.loss_type` values; None leaves the check to the builder.
    loss_types: tuple[str, ...] | None
    defaults: Callable[[], ml_collections.ConfigDict]
    # Top-level config sections the objective reads besides `objective` (online RL's
    # `rollout` and `rewards`): name -> defaults.
    sections: Callable[[], dict[str, ml_collections.ConfigDict]] | None = None


REGISTRY: dict[str, Registration] = {}


def register(
    name: str,
    *,
    loss_types: tuple[str, ...] | None,
    defaults: Callable[[], ml_collections.ConfigDict],
    sections: Callable[[], dict[str, ml_collections.ConfigDict]] | None = None,
):
    """Registers `builder(config, graphdef) -> Objective` under `name`.

    `loss_types` lists the valid `config.objective.loss_type` values (None: the builder
    checks them; DPO accepts comma-joined combinations); `defaults()` returns the
    objective's `config.objective` keys with their default values; `sections()` any other
    top-level config sections it reads, with theirs."""

    def wrap(builder):
        REGISTRY[name] = Registration(builder, loss_types, defaults, sections)
        return builder

    return wrap
