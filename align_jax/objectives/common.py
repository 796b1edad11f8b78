"""What objectives share: a batch's pairs as model rows, pair metrics, the KL-to-reference
metric, and the log-probs and entropy of online rollout rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.losses import token_kl, token_logprobs
from align_jax.models import apply_model


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
        "reference_from": "",  # the frozen reference's run or checkpoint; "" = config.init_from
        # Reference log-probs from one pass before training, cached in the workdir: no
        # reference model in memory while training.
        "precompute_ref_logps": False,
    }


def policy_token_logps(graphdef, params, batch, temperature: float):
    """(log-probs [N, W-1] of each rollout row's next tokens under softmax(logits / T), the
    logits): rows with explicit positions (align_jax/rollout/rows.py)."""
    tokens = batch["tokens"]
    logits = apply_model(
        graphdef, params, tokens[:, :-1], batch["positions"][:, :-1], batch["segment_ids"][:, :-1]
    )
    return token_logprobs(logits, tokens[:, 1:], temperature=temperature), logits


def split_rows(tree, k: int):
    """Every leaf [B, ...] -> [k, B/k, ...], rows i::k in micro-batch i. Strided, so with the
    batch axis split over devices in contiguous blocks every device keeps its own rows."""
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), tree
    )


def merge_rows(tree):
    """`split_rows`'s inverse: [k, B/k, ...] -> [B, ...] in the original row order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def forward_rows(batch: dict) -> dict:
    """The fields a forward pass reads of rollout rows: tokens, positions, segment ids."""
    return {k: batch[k] for k in ("tokens", "positions", "segment_ids")}


def map_micro_batches(fn, rows, micro_batches: int):
    """`fn(rows)` computed over `micro_batches` micro-batches of the rows one after another
    (`lax.map`), merged back in row order: the same numbers, with the temporaries (logits) of
    N / micro_batches rows alive at a time. `fn` must work row by row."""
    if micro_batches == 1:
        return fn(rows)
    return merge_rows(jax.lax.map(fn, split_rows(rows, micro_batches)))


def rollout_logps(graphdef, params, batch, temperature: float, micro_batches: int = 1):
    """`policy_token_logps`'s log-probs [N, W-1] over `micro_batches` micro-batches of rows
    (the prepare pass of online objectives)."""
    rows = forward_rows(batch)
    logps = lambda r: policy_token_logps(graphdef, params, r, temperature)[0]  # noqa: E731
    return map_micro_batches(logps, rows, micro_batches)


def token_entropy(logits, temperature: float):
    """Entropy of softmax(logits / T) at each position [N, W-1], no gradient."""
    z = jax.lax.stop_gradient(logits.astype(jnp.float32)) / temperature
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
