"""Next-token prediction: pretraining, and SFT (the same loss on a different mask).

Loss: cross-entropy summed over the target tokens the data marks in `loss_mask`, divided
once by their number. Pretraining marks every target of the same document as its input;
SFT marks only completion / assistant tokens, so prompt tokens carry no loss.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from align_jax.losses import cross_entropy
from align_jax.models import apply_model
from align_jax.objectives.base import Objective, register


def _defaults(name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": name,  # the objective this config trains: pretrain | sft
            "loss_type": "cross_entropy",  # next-token cross-entropy, the only one
            "z_loss": 0.0,  # weight of PaLM's log Z² term per token (arXiv 2204.02311); 0 disables
        }
    )


def pretrain_defaults() -> ml_collections.ConfigDict:
    """Pretraining's `config.objective` keys."""
    return _defaults("pretrain")


def sft_defaults() -> ml_collections.ConfigDict:
    """SFT's `config.objective` keys (pretraining's, under its own name)."""
    return _defaults("sft")


def _build(config, graphdef, name: str, batch_kind: str) -> Objective:
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

    return Objective(name, loss_fn, batch_kind=batch_kind, reports_perplexity=True)


@register("pretrain", loss_types=("cross_entropy",), defaults=pretrain_defaults)
def build_pretrain(config, graphdef) -> Objective:
    return _build(config, graphdef, "pretrain", "tokens")


@register("sft", loss_types=("cross_entropy",), defaults=sft_defaults)
def build_sft(config, graphdef) -> Objective:
    return _build(config, graphdef, "sft", "sft")
