"""What the preference objectives share: a batch's pairs as model rows, pair metrics, and
the KL-to-reference metric."""

from __future__ import annotations

import jax.numpy as jnp

from align_jax.losses import token_kl


def pair_rows(batch: dict, fields=("tokens", "segment_ids", "mask")):
    """`(tokens, segment_ids, mask)` [2B, L] of a pair batch (or the given `fields`): chosen
    rows, then rejected rows, so both sides go through the model as one batch."""
    return tuple(
        jnp.concatenate([batch[f"chosen_{field}"], batch[f"rejected_{field}"]]) for field in fields
    )


def pair_metrics(valid, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    """Means over valid pairs, as `(sum, count)`: how often and by how much the chosen side's
    reward is the larger, both sides' rewards and summed log-probs."""
    count = jnp.sum(valid)
    mean = lambda x: (jnp.sum(x * valid), count)  # noqa: E731
    return {
        "reward_accuracy": mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "reward_margin": mean(chosen_rewards - rejected_rewards),
        "chosen_reward": mean(chosen_rewards),
        "rejected_reward": mean(rejected_rewards),
        "chosen_logps": mean(chosen_logps),
        "rejected_logps": mean(rejected_logps),
    }


def kl_ref_metric(logits, ref_logits, mask, row_valid):
    """`(sum, count)` of the exact next-token KL(π‖π_ref) over the masked tokens of valid rows:
    along the dataset's own prefixes."""
    weights = mask * row_valid[:, None]
    return jnp.sum(token_kl(logits, ref_logits) * weights), jnp.sum(weights)


def reference_keys() -> dict:
    """`config.objective` keys of every objective with a frozen reference model (the training
    loop reads them to load it)."""
    return {
        "reference_from": "",  # "" = config.init_from
        "precompute_ref_logps": False,  # one pass before training, cached in the workdir
    }
