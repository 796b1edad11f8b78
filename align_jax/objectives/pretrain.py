"""Next-token prediction on packed rows (pretraining).

Loss: cross-entropy summed over target tokens that belong to the same document as their
input (the `loss_mask` the packer writes), divided once by the number of such tokens.
"""

from __future__ import annotations

import jax.numpy as jnp

from align_jax.losses import cross_entropy
from align_jax.models import apply_model
from align_jax.objectives import Objective, register


@register("pretrain", loss_types=("cross_entropy",))
def build(config, graphdef) -> Objective:
    z_loss = float(config.objective.z_loss)

    def loss_fn(params, frozen, batch, rng):
        del frozen, rng
        logits = apply_model(
            graphdef, params, batch["inputs"], batch["positions"], batch["segment_ids"]
        )
        mask = batch["loss_mask"]
        nll_sum, z_sum, num_tokens = cross_entropy(logits, batch["targets"], mask, z_loss=z_loss)
        correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32) * mask
        metrics = {
            "nll": (nll_sum, num_tokens),
            "token_accuracy": (jnp.sum(correct), num_tokens),
        }
        if z_loss:
            metrics["z_loss"] = (z_sum, num_tokens)
        return nll_sum + z_sum, (num_tokens, metrics)

    return Objective(
        name="pretrain",
        loss_fn=loss_fn,
        batch_kind="tokens",
        tokens_per_batch=lambda batch: int(batch["inputs"].size),
    )
