"""Samples -> training rows: what an online RL step trains on.

The sampler (align_jax/rollout/sampler.py) left-pads prompts and counts RoPE positions over
real tokens only; its completions are [N, T] with a mask that is 1 on the generated tokens
(eos included) and 0 after. `training_rows` lays each sample out right-padded in a row of
a fixed width W (the configured prompt length plus `max_new_tokens`, so every step has one
shape and compiles once):

    tokens       [N, W]    prompt tokens, completion tokens, then pad
    positions    [N, W]    0, 1, 2, ... over the real tokens (0 on padding): the sampler's
    segment_ids  [N, W]    1 on real tokens, 0 on padding (padding attends to nothing real)
    completion_mask [N, W-1]  1 where the *target* `tokens[:, 1:]` is a completion token
    sampler_logps   [N, W-1]  the sampler's log-prob of that target (0 elsewhere)

Targets are the next tokens, as in every objective (`models.sequence_logprobs`): the
log-prob of completion token i of a row whose prompt has n tokens sits at index n - 1 + i
of the shifted arrays. Positions are explicit so that they count real tokens whatever the
layout: RoPE depends only on position differences, so a uniform shift (the sampler's left
padding) changes nothing, but a gap among a row's real tokens (a prompt padded to its
slots, then the completion) would be counted by `arange` and change every log-prob after
it. tests/objectives/test_grpo_objective.py measures both.

`completion_view` goes back: a [N, W-1] array's completion part as [N, T], aligned with
the sampler's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROW_FIELDS = ("tokens", "positions", "segment_ids", "completion_mask", "sampler_logps")


def training_rows(
    prompt_ids: Sequence[Sequence[int]],
    completions: np.ndarray,
    completion_mask: np.ndarray,
    logprobs: np.ndarray,
    *,
    width: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Right-padded rows (see the module docstring) of N samples: `prompt_ids[i]` (ragged,
    without padding) followed by `completions[i]` where `completion_mask[i]` is 1.
    `completions`, `completion_mask`, `logprobs`: [N, T] as the sampler returns them."""
    completions = np.asarray(completions)
    completion_mask = np.asarray(completion_mask).astype(bool)
    logprobs = np.asarray(logprobs, np.float32)
    n = len(prompt_ids)
    if completions.shape[0] != n:
        raise ValueError(f"{n} prompts for {completions.shape[0]} completions")
    tokens = np.full((n, width), pad_id, np.int32)
    positions = np.zeros((n, width), np.int32)
    segment_ids = np.zeros((n, width), np.int32)
    target_mask = np.zeros((n, width - 1), np.int32)
    sampler_logps = np.zeros((n, width - 1), np.float32)
    for i, prompt in enumerate(prompt_ids):
        p = len(prompt)
        c = int(completion_mask[i].sum())
        if p < 1:
            raise ValueError(f"sample {i} has an empty prompt; a prompt needs at least one token")
        if p + c > width:
            raise ValueError(f"sample {i}: {p} prompt + {c} completion tokens exceed width {width}")
        if c and not completion_mask[i, :c].all():
            raise ValueError(f"sample {i}: the completion mask is not a prefix of its row")
        tokens[i, :p] = prompt
        tokens[i, p : p + c] = completions[i, :c]
        positions[i, : p + c] = np.arange(p + c)
        segment_ids[i, : p + c] = 1
        target_mask[i, p - 1 : p - 1 + c] = 1
        sampler_logps[i, p - 1 : p - 1 + c] = logprobs[i, :c]
    return {
        "tokens": tokens,
        "positions": positions,
        "segment_ids": segment_ids,
        "completion_mask": target_mask,
        "sampler_logps": sampler_logps,
    }


def completion_view(rows_nw1: np.ndarray, completion_mask_nw1: np.ndarray, length: int):
    """The completion part of a [N, W-1] target-aligned array as [N, length] (zero after each
    completion's end): the inverse of `training_rows`' placement, for comparing with the
    sampler's outputs."""
    rows = np.asarray(rows_nw1)
    mask = np.asarray(completion_mask_nw1).astype(bool)
    out = np.zeros((rows.shape[0], length), rows.dtype)
    for i in range(rows.shape[0]):
        values = rows[i][mask[i]]
        out[i, : len(values)] = values
    return out
