"""Reward model: a scalar head on the backbone, trained with the Bradley–Terry loss.

The reward of a sequence is the head's score at its last non-pad token (the eos that
closes the completion). Chosen and rejected rows go through the model as one batch of 2B
rows: one forward pass, one set of weights read. The loss is summed over valid pairs and
divided once by their number.
"""

from __future__ import annotations

import jax.numpy as jnp

from align_jax.losses import bradley_terry_loss
from align_jax.models import apply_scores
from align_jax.objectives import Objective, register


def last_token_rewards(graphdef, params, tokens_bl, segment_ids_bl):
    """Scores [B] at each row's last real token (rows are right-padded)."""
    scores_bl = apply_scores(graphdef, params, tokens_bl, None, segment_ids_bl)
    last_b = jnp.maximum(jnp.sum(segment_ids_bl > 0, axis=1) - 1, 0)
    return jnp.take_along_axis(scores_bl, last_b[:, None], axis=1)[:, 0]


@register("reward", loss_types=("bradley_terry",))
def build(config, graphdef) -> Objective:
    if config.model.head != "scalar":
        raise ValueError(
            f"objective 'reward' needs config.model.head='scalar' (got {config.model.head!r})"
        )
    center_coef = float(config.objective.center_coef)

    def loss_fn(params, frozen, batch, rng):
        del frozen, rng
        tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]])
        segments = jnp.concatenate([batch["chosen_segment_ids"], batch["rejected_segment_ids"]])
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

    return Objective(
        name="reward",
        loss_fn=loss_fn,
        batch_kind="pairs",
        tokens_per_batch=lambda batch: int(batch["chosen_tokens"].size * 2),
    )
