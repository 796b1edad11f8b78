"""Reward-model loss (Bradley–Terry; InstructGPT, arXiv 2203.02155)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bradley_terry_loss(
    chosen_rewards_b: jax.Array,
    rejected_rewards_b: jax.Array,
    *,
    margin_b: jax.Array | None = None,
    center_coef: float = 0.0,
) -> jax.Array:
    """Per-pair loss [B]: `−log σ(r_c − r_r − m) + c · (r_c + r_r)²`.

    `margin_b` (default 0) asks the chosen reward to win by at least m (Llama 2's margin
    loss, arXiv 2307.09288); `center_coef` c keeps rewards centred near 0 (TRL's
    `center_rewards_coefficient`).
    """
    diff = chosen_rewards_b - rejected_rewards_b
    if margin_b is not None:
        diff = diff - margin_b
    loss = -jax.nn.log_sigmoid(diff)
    if center_coef:
        loss = loss + center_coef * jnp.square(chosen_rewards_b + rejected_rewards_b)
    return loss
