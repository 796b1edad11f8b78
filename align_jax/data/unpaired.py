"""Unpaired batches for KTO: one completion per prompt with a desirable / undesirable label.

Each record (`align_jax.data.records.UnpairedRecords`: `prompt`, `completion`, `label`)
becomes one row of `seq_len` tokens, `bos + prompt + completion + eos`, right-padded:
`tokens`, `mask` (1 on completion tokens, contiguous after the prompt), `segment_ids` (1 on
real tokens), and per example `label` (1.0 desirable, 0.0 undesirable), `valid` (0 for eval
padding) and `index`. A `ref_table` [N, 2] float32 (column 0: the reference log-prob of
each record's completion) adds a `ref_logps` field. Over-long examples are truncated at the
end or dropped (`config.data.overlong`), counted; the start-up log counts desirable and
undesirable ones. The loop's interface is as in align_jax/data/pairs.py, `batch_shapes` too.

KTO's mismatched pairs (each prompt with another example's completion) are built in the
train step from these rows (align_jax/objectives/kto.py), so they pair the completions of
the batch actually being trained on.
"""

from __future__ import annotations

import functools

import grain
import jax
import numpy as np

from align_jax.data.pipeline import (
    Examples,
    eval_iterator,
    local_batch_shapes,
    pad_row,
    row_specs,
    split_records,
    train_iterator,
)
from align_jax.data.records import UnpairedRecords, encode_completion


def load_source(data_cfg, split: str, tokenizer) -> Examples:
    def length(record):
        tokens, _ = encode_completion(record["prompt"], record["completion"], tokenizer, data_cfg)
        return len(tokens)

    records = split_records(data_cfg, split, UnpairedRecords())
    return Examples(records, length, data_cfg.seq_len, data_cfg.overlong)


class _Encode(grain.transforms.Map):
    ref_fields = ("ref_logps",)

    def __init__(self, tokenizer, data_cfg, source: Examples):
        del source  # every example encodes alike
        self._tokenizer, self._cfg = tokenizer, data_cfg

    def map(self, record):
        tokens, mask = encode_completion(
            record["prompt"], record["completion"], self._tokenizer, self._cfg
        )
        out = pad_row(tokens, mask, self._cfg.seq_len)
        out["label"] = np.float32(record["label"])
        out["valid"] = np.float32(1.0)
        out["index"] = np.int32(record["_index"])
        return out


def batch_shapes(
    data_cfg, process_count: int | None = None, *, with_ref_table: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
    """This process's train and eval batches (`process_count` defaults to jax's), with
    `ref_logps` when the iterators are given a `ref_table`."""
    fields = {**row_specs(data_cfg.seq_len), "label": ((), np.float32)}
    fields.update(valid=((), np.float32), index=((), np.int32))
    refs = _Encode.ref_fields if with_ref_table else ()
    return local_batch_shapes(data_cfg, process_count, fields, refs)


make_train_iterator = functools.partial(train_iterator, encoder=_Encode)
make_eval_iterator = functools.partial(eval_iterator, encoder=_Encode)
