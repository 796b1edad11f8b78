"""Reward model: a scalar head on the backbone, trained with the Bradley–Terry loss.

The reward of a sequence is the head's score at its last non-pad token (the eos that
closes the completion). Chosen and rejected rows go through the model as one batch of 2B
rows: one forward pass, one set of weights read. The loss is summed over valid pairs and
divided once by their number.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from align_jax.losses import bradley_terry_loss
from align_jax.models import apply_model
from align_jax.objectives.base import Objective, register
from align_jax.objectives.common import pair_rows


def defaults() -> ml_collections.ConfigDict:
    """The reward model's `config.objective` keys; `center_coef` adds
    `c · (r_chosen + r_rejected)²`, keeping rewards near zero."""
    return ml_collections.ConfigDict(
        {
            "name": "reward",  # the objective this config trains (needs model.head = "scalar")
            "loss_type": "bradley_terry",  # −log σ(r_chosen − r_rejected − margin), the only one
            "center_coef": 0.0,  # c of c · (r_chosen + r_rejected)²; 0 disables
        }
    )


def last_token_rewards(graphdef, params, tokens_bl, segment_ids_bl):
    """Scores [B] at each row's last real token (rows are right-padded)."""
    scores_bl = apply_model(graphdef, params, tokens_bl, None, segment_ids_bl)
    last_b = jnp.maximum(jnp.sum(segment_ids_bl > 0, axis=1) - 1, 0)
    return jnp.take_along_axis(scores_bl, last_b[:, None], axis=1)[:, 0]


@register("reward", loss_types=("bradley_terry",), defaults=defaults)
def build(config, graphdef) -> Objective:
    if config.model.head != "scalar":
        raise ValueError(
            f"objective 'reward' needs config.model.head='scalar' (got {config.model.head!r})"
        )
    center_coef = float(config.objective.center_coef)

    def loss_fn(params, frozen, batch, rng):
        del frozen, rng
        tokens, segments = pair_rows(batch, ("tokens", "segment_ids"))
        rewards = last_token_rewards(graphdef, params, tokens, segments)
        chosen, rejected = jnp.split(rewards, 2)
        valid = batch["valid"]
        losses = bradley_terry_loss(
            chosen, rejected, margin_b=batch["margin"], center_coef=center_coef
        )
        n = jnp.sum(valid)
        metrics = {
            "accuracy": (jnp.sum((chosen > rejected) * valid), n),
            "reward_margin": (jnp.sum((chosen - rejected) * valid), n),
            "chosen_reward": (jnp.sum(chosen * valid), n),
            "rejected_reward": (jnp.sum(rejected * valid), n),
            "mean_reward": (jnp.sum((chosen + rejected) * valid), 2 * n),
        }
        return jnp.sum(losses * valid), (n, metrics)

    return Objective("reward", loss_fn, batch_kind="pairs")
