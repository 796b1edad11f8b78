"""Preference-pair batches for reward models and the DPO family (grain).

Each pair becomes two rows of `seq_len` tokens, `bos + prompt + completion + eos`, right-
padded: `chosen_tokens`, `chosen_mask` (1 on completion tokens), `chosen_segment_ids`
(1 on real tokens, 0 on padding), the same for `rejected_*`, and per pair `margin`
(default 0), `label` (default 1.0: chosen preferred), `valid` (0 for eval padding) and
`index` (the pair's position in the source). A `ref_table` [N, 2] float32 (reference
log-probs of chosen and rejected by index) adds `ref_chosen_logps` / `ref_rejected_logps`.
Pairs are not packed: a pair's two rows go through the model in one concatenated batch.
Over-long pairs are truncated at the end or dropped (`config.data.overlong`), counted.

The loop's interface: `load_source(data_cfg, split, tokenizer)`, and
`make_train_iterator(data_cfg, tokenizer, *, seed, source, ref_table=None)` /
`make_eval_iterator(data_cfg, tokenizer, *, source, ref_table=None)`, align_jax/data/
pipeline.py's pipelines over this encoding (they also take `process_index` /
`process_count`). `batch_shapes(data_cfg)` gives their batch fields, shapes and dtypes.
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
from align_jax.data.records import PairRecords, encode_completion

SIDES = ("chosen", "rejected")


def load_source(data_cfg, split: str, tokenizer) -> Examples:
    def longest(record):
        return max(
            len(encode_completion(record["prompt"], record[s], tokenizer, data_cfg)[0])
            for s in SIDES
        )

    records = split_records(
        data_cfg, split, PairRecords(drop_identical=data_cfg.drop_identical_pairs)
    )
    return Examples(records, longest, data_cfg.seq_len, data_cfg.overlong)


class _Encode(grain.transforms.Map):
    ref_fields = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, tokenizer, data_cfg, source: Examples):
        del source  # every pair encodes alike
        self._tokenizer, self._cfg = tokenizer, data_cfg

    def map(self, record):
        out = {}
        for side in SIDES:
            tokens, mask = encode_completion(
                record["prompt"], record[side], self._tokenizer, self._cfg
            )
            row = pad_row(tokens, mask, self._cfg.seq_len)
            out.update({f"{side}_{name}": value for name, value in row.items()})
        out["margin"] = np.float32(record.get("margin", 0.0))
        out["label"] = np.float32(record.get("label", 1.0))
        out["valid"] = np.float32(1.0)
        out["index"] = np.int32(record["_index"])
        return out


def batch_shapes(
    data_cfg, process_count: int | None = None, *, with_ref_table: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
    """This process's train and eval batches (`process_count` defaults to jax's), with the
    reference log-prob fields when the iterators are given a `ref_table`."""
    row = row_specs(data_cfg.seq_len)
    fields = {f"{side}_{name}": spec for side in SIDES for name, spec in row.items()}
    fields.update(margin=((), np.float32), label=((), np.float32), valid=((), np.float32))
    fields["index"] = ((), np.int32)
    refs = _Encode.ref_fields if with_ref_table else ()
    return local_batch_shapes(data_cfg, process_count, fields, refs)


make_train_iterator = functools.partial(train_iterator, encoder=_Encode)
make_eval_iterator = functools.partial(eval_iterator, encoder=_Encode)
