"""Kahneman–Tversky Optimization on unpaired examples (KTO, arXiv 2402.01306).

Batch: the unpaired pipeline's rows (align_jax/data/unpaired.py): `tokens`, `mask`,
`segment_ids` [B, L], `label` [B] (1 desirable), `valid` [B]. `config.objective.loss_type`:

- `kto`: desirable `w_d (1 − σ(β(ρ − z0)))`, undesirable `w_u (1 − σ(β(z0 − ρ)))`, with
  `ρ = log π(y|x) − log π_ref(y|x)` and the reference point `z0`, below.
- `apo_zero_unpaired` (APO, arXiv 2408.06266): the same with z0 = 0; no mismatched pairs.

Weights are `config.objective.desirable_weight` / `undesirable_weight`; the loss is summed
over valid examples and divided once by their number (TRL's mean over the batch).

The reference point (as TRL's KTOTrainer): `z0 = max(0, mean(log π(y'|x) − log π_ref(y'|x)))`
over mismatched pairs, detached. Here the mismatched pairs are built in the step, rolling the
completions by one within the batch: prompt i gets the completion of example i − 1, so the
mismatched completions are exactly those of the batch (the paper's recommendation). TRL
instead fixes each example's partner once, when the dataset is prepared (in file order,
before shuffling). Two consequences of doing it in the step: under gradient accumulation the
roll and the mean are per micro-batch (so a micro-batch needs at least 2 examples), and the
reference's log-probs of mismatched pairs cannot be precomputed, so `precompute_ref_logps`
is refused for `kto` (it works for `apo_zero_unpaired`, which needs none). Policy log-probs
of the mismatched pairs come from a separate forward pass without gradients (z0 is detached),
as TRL's; the reference scores matched and mismatched rows in one pass.

Metrics: `chosen_reward` / `rejected_reward` (β ρ of desirable / undesirable examples),
`chosen_logps` / `rejected_logps`, `kl` (z0, per (micro-)batch), and `kl_ref` (the exact
next-token KL to the reference over completion tokens, as the DPO objective).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from align_jax.losses import KTO_LOSS_TYPES, kto_loss
from align_jax.models import sequence_logprobs
from align_jax.objectives.base import Objective, register
from align_jax.objectives.common import kl_ref_metric, reference_keys


def defaults() -> ml_collections.ConfigDict:
    """KTO's `config.objective` keys and their defaults. `desirable_weight` and
    `undesirable_weight` are TRL's names; the KTO paper keeps w_d n_d / (w_u n_u) in
    [1, 4/3]."""
    return ml_collections.ConfigDict(
        {
            "name": "kto",  # the objective this config trains
            "loss_type": "kto",  # kto | apo_zero_unpaired (reference point z0 = 0)
            "beta": 0.1,  # β: scale of the log-ratio to the reference ρ − z0
            "desirable_weight": 1.0,  # w_d: loss weight of desirable examples (label 1)
            "undesirable_weight": 1.0,  # w_u: loss weight of undesirable examples (label 0)
            **reference_keys(),
        }
    )


def mismatched_rows(tokens, mask, segment_ids, shift: int = 1):
    """Rows `prompt_i + completion_{i−shift}` (rolled within the batch), as the pipeline
    would encode them: `(tokens, mask, segment_ids)` [B, L], truncated at L.

    Prompt and completion token ids are concatenated as they are, which is what the
    pipeline's encoding gives (each piece is tokenized on its own). The completion of a row
    is its contiguous run of mask = 1 (the completion and its eos) after the prompt; a
    completion already truncated in its own row stays so.
    """
    length = tokens.shape[1]
    real = segment_ids > 0
    prompt_len = jnp.sum(real & (jnp.cumsum(mask, axis=1) == 0), axis=1)
    completion_len = jnp.sum(mask > 0, axis=1)
    other_tokens = jnp.roll(tokens, shift, axis=0)
    other_start = jnp.roll(prompt_len, shift)
    other_len = jnp.roll(completion_len, shift)
    pos = jnp.arange(length)[None]
    in_prompt = pos < prompt_len[:, None]
    in_completion = ~in_prompt & (pos < (prompt_len + other_len)[:, None])
    src = jnp.clip(pos - prompt_len[:, None] + other_start[:, None], 0, length - 1)
    moved = jnp.take_along_axis(other_tokens, src, axis=1)
    new_tokens = jnp.where(in_prompt, tokens, jnp.where(in_completion, moved, 0))
    return (
        new_tokens.astype(tokens.dtype),
        in_completion.astype(mask.dtype),
        (in_prompt | in_completion).astype(segment_ids.dtype),
    )


@register("kto", loss_types=KTO_LOSS_TYPES, defaults=defaults)
def build(config, graphdef) -> Objective:
    o = config.objective
    beta = float(o.beta)
    use_kl = o.loss_type == "kto"
    if use_kl and o.precompute_ref_logps:
        raise ValueError(
            "config.objective.precompute_ref_logps=True is not supported by loss_type 'kto': "
            "its reference point needs the reference's log-probs of prompts paired with other "
            "completions of the same batch, known only in the step; leave it False "
            "('apo_zero_unpaired' supports it)"
        )
    micro = int(config.data.batch_size) // max(int(config.optimizer.grad_accum_steps), 1)
    if use_kl and micro < 2:
        raise ValueError(
            f"loss_type 'kto' needs at least 2 examples per micro-batch (config.data.batch_size="
            f"{config.data.batch_size}, grad_accum_steps={config.optimizer.grad_accum_steps}): "
            "its KL estimate pairs each prompt with another example's completion"
        )

    def fields(batch):
        return batch["tokens"], batch["segment_ids"], batch["mask"]

    def loss_fn(params, frozen, batch, rng):
        del rng
        n = batch["tokens"].shape[0]
        valid = batch["valid"]
        token_logps, mask, logits = sequence_logprobs(graphdef, params, *fields(batch))
        logps = jnp.sum(token_logps, axis=-1)
        if use_kl:
            kl_tokens, kl_mask, kl_segments = mismatched_rows(
                batch["tokens"], batch["mask"], batch["segment_ids"]
            )
            kl_token_logps, _, _ = sequence_logprobs(
                graphdef, jax.lax.stop_gradient(params), kl_tokens, kl_segments, kl_mask
            )
        kl_ref, z0 = None, None
        if "ref_logps" in batch:
            if use_kl:
                raise ValueError("loss_type 'kto' computes the reference in the step")
            ref_logps = batch["ref_logps"]
        else:
            rows = fields(batch)
            if use_kl:  # matched and mismatched rows in one reference pass
                kl_rows = (kl_tokens, kl_segments, kl_mask)
                rows = [jnp.concatenate([a, b]) for a, b in zip(rows, kl_rows, strict=True)]
            ref_token_logps, _, ref_logits = jax.lax.stop_gradient(
                sequence_logprobs(graphdef, frozen["reference"], *rows)
            )
            ref_all = jnp.sum(ref_token_logps, axis=-1)
            ref_logps = ref_all[:n]
            kl_ref = kl_ref_metric(logits, ref_logits[:n], mask, valid)
            if use_kl:
                # Pairs whose two source examples are both real (eval pads the last batch).
                pair_valid = valid * jnp.roll(valid, 1)
                drift = jnp.sum(kl_token_logps, axis=-1) - ref_all[n:]
                mean_drift = jnp.sum(drift * pair_valid) / jnp.maximum(jnp.sum(pair_valid), 1.0)
                z0 = jax.lax.stop_gradient(jnp.maximum(mean_drift, 0.0))
        desirable = batch["label"] > 0.5
        losses, rewards, _ = kto_loss(
            logps, ref_logps, desirable,
            reference_point=z0, beta=beta,
            desirable_weight=float(o.desirable_weight),
            undesirable_weight=float(o.undesirable_weight), loss_type=o.loss_type,
        )  # fmt: skip
        d = valid * desirable
        u = valid * (~desirable)
        metrics = {
            "chosen_reward": (jnp.sum(rewards * d), jnp.sum(d)),
            "rejected_reward": (jnp.sum(rewards * u), jnp.sum(u)),
            "chosen_logps": (jnp.sum(logps * d), jnp.sum(d)),
            "rejected_logps": (jnp.sum(logps * u), jnp.sum(u)),
        }
        if z0 is not None:
            metrics["kl"] = (z0, jnp.ones((), jnp.float32))
        if kl_ref is not None:
            metrics["kl_ref"] = kl_ref
        return jnp.sum(losses * valid), (jnp.sum(valid), metrics)

    def reference_logps_fn(params, batch):
        # Only reached with apo_zero_unpaired (build refuses precompute for kto): column 0 is
        # the reference log-prob of the completion, column 1 unused.
        logps = jnp.sum(sequence_logprobs(graphdef, params, *fields(batch))[0], axis=-1)
        return logps, jnp.zeros_like(logps)

    return Objective(
        "kto", loss_fn, batch_kind="unpaired", frozen_models=("reference",),
        reference_logps_fn=reference_logps_fn,
    )  # fmt: skip
