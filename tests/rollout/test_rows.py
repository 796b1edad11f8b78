"""Sampler outputs -> right-padded training rows (align_jax/rollout/rows.py), against rows
written out by hand, and the way back (`completion_view`)."""

import numpy as np
import pytest

from align_jax.rollout.rows import ROW_FIELDS, completion_view, training_rows

PAD = 0
# Prompts of 1, 3 and 5 tokens; completions (T = 4) full to T, empty, and ending early (eos
# 2 as its 2nd token). Slots after a completion's end hold junk that must not leak.
PROMPTS = [[1], [1, 5, 9], [1, 7, 3, 11, 4]]
COMPLETIONS = np.array([[21, 22, 23, 24], [99, 99, 99, 99], [31, 2, 99, 99]], np.int32)
MASK = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]], np.int32)
LOGPROBS = np.array(
    [[-0.5, -1.0, -1.5, -2.0], [-9.0, -9.0, -9.0, -9.0], [-0.25, -0.75, -9.0, -9.0]], np.float32
)
WIDTH = 8

EXPECTED = {
    "tokens": [
        [1, 21, 22, 23, 24, 0, 0, 0],
        [1, 5, 9, 0, 0, 0, 0, 0],
        [1, 7, 3, 11, 4, 31, 2, 0],
    ],
    "positions": [
        [0, 1, 2, 3, 4, 0, 0, 0],
        [0, 1, 2, 0, 0, 0, 0, 0],
        [0, 1, 2, 3, 4, 5, 6, 0],
    ],
    "segment_ids": [
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
    ],
    # target j is tokens[j + 1]: completion token i of a row with an n-token prompt is at n-1+i
    "completion_mask": [
        [1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0],
    ],
    "sampler_logps": [
        [-0.5, -1.0, -1.5, -2.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, -0.25, -0.75, 0.0],
    ],
}


def rows(prompts=PROMPTS, completions=COMPLETIONS, mask=MASK, logprobs=LOGPROBS, width=WIDTH):
    return training_rows(prompts, completions, mask, logprobs, width=width, pad_id=PAD)


def test_rows_equal_the_hand_written_layout():
    out = rows()
    assert set(out) == set(ROW_FIELDS)
    dtypes = {"sampler_logps": np.float32}
    for field, want in EXPECTED.items():
        assert out[field].dtype == dtypes.get(field, np.int32), field
        np.testing.assert_array_equal(out[field], np.array(want), err_msg=field)


def test_completion_view_returns_the_samplers_arrays():
    out = rows()
    logps = completion_view(out["sampler_logps"], out["completion_mask"], 4)
    np.testing.assert_array_equal(logps, np.where(MASK > 0, LOGPROBS, 0.0))
    assert logps.dtype == np.float32
    # the targets' view is the completion tokens themselves (pad after each end)
    tokens = completion_view(out["tokens"][:, 1:], out["completion_mask"], 4)
    np.testing.assert_array_equal(tokens, np.where(MASK > 0, COMPLETIONS, PAD))
    assert tokens.dtype == np.int32


def test_rows_reject_bad_samples():
    with pytest.raises(ValueError, match="sample 2: 5 prompt \\+ 2 completion tokens exceed"):
        rows(width=6)
    gap = MASK.copy()
    gap[0] = [1, 0, 1, 0]
    with pytest.raises(ValueError, match="sample 0: the completion mask is not a prefix"):
        rows(mask=gap)
    with pytest.raises(ValueError, match="sample 1 has an empty prompt"):
        rows(prompts=[[1], [], [1, 7, 3, 11, 4]])
    with pytest.raises(ValueError, match="2 prompts for 3 completions"):
        rows(prompts=PROMPTS[:2])
    # a row exactly `width` long is fine: the check is strict
    assert rows(width=7)["segment_ids"][2].tolist() == [1] * 7
