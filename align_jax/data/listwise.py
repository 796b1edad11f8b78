"""Listwise batches: K ranked or scored responses per prompt (grain).

Each record (`align_jax.data.records.ListRecords`: `prompt`, `responses`, `ranks` or
`scores`) becomes K = `config.data.list_size` rows of `seq_len` tokens,
`bos + prompt + response + eos`, right-padded, in ranked order (best first):

- `tokens`, `mask` (1 on response tokens), `segment_ids` (1 on real tokens): [K, L]
- `list_mask` [K]: 1 on real responses; a list shorter than K is padded with empty rows
- `ranks` [K] int32: 1 + the number of strictly better responses (0 on padding), so metrics
  can leave tied pairs out
- `scores` [K] (only when every record of the split has `scores`; 0 on padding)
- `valid` (0 for eval padding), `index` (the record's position in the source)

A list longer than K keeps its best K (counted as `lists_cut`). Over-long rows are truncated
at the end or the whole list is dropped (`config.data.overlong`), counted. Lists are not
packed: a list's K rows go through the model in one concatenated batch. The reference
model of a listwise objective runs in the train step (no precomputed reference log-probs).
The loop's interface is as in align_jax/data/pairs.py, without `ref_table`;
`batch_shapes(data_cfg, scored=...)` gives the batch fields, shapes and dtypes.
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
from align_jax.data.records import ListRecords, encode_list


class ListExamples(Examples):
    """A split's lists; `scored`: every record has `scores`, so its batches carry them."""

    @property
    def scored(self) -> bool:
        return self.records.stats()["records_with_scores"] == len(self.records)


def load_source(data_cfg, split: str, tokenizer) -> ListExamples:
    def longest(record):
        return max(len(tokens) for tokens, _ in encode_list(record, tokenizer, data_cfg))

    records = split_records(data_cfg, split, ListRecords(data_cfg.list_size))
    return ListExamples(records, longest, data_cfg.seq_len, data_cfg.overlong)


class _Encode(grain.transforms.Map):
    def __init__(self, tokenizer, data_cfg, source: ListExamples):
        self._tokenizer, self._cfg, self._scored = tokenizer, data_cfg, source.scored

    def map(self, record):
        k, length = self._cfg.list_size, self._cfg.seq_len
        empty = np.zeros(0, np.int32)
        rows = [pad_row(t, m, length) for t, m in encode_list(record, self._tokenizer, self._cfg)]
        rows += [pad_row(empty, empty, length)] * (k - len(rows))
        out = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
        n = len(record["responses"])
        out["list_mask"] = (np.arange(k) < n).astype(np.float32)
        out["ranks"] = np.pad(np.asarray(record["ranks"], np.int32), (0, k - n))
        out["valid"] = np.float32(1.0)
        out["index"] = np.int32(record["_index"])
        if self._scored:
            out["scores"] = np.pad(np.asarray(record["scores"], np.float32), (0, k - n))
        return out


def batch_shapes(
    data_cfg, process_count: int | None = None, *, scored: bool
) -> dict[str, jax.ShapeDtypeStruct]:
    """This process's batches of a split (`process_count` defaults to jax's). `scored`: the
    split's `load_source(...).scored`, whether its batches carry `scores`; the data decides
    that, not the config, so the train and eval splits may differ in it."""
    k = data_cfg.list_size
    fields = {**row_specs(k, data_cfg.seq_len), "list_mask": ((k,), np.float32)}
    fields.update(ranks=((k,), np.int32), valid=((), np.float32), index=((), np.int32))
    if scored:
        fields["scores"] = ((k,), np.float32)
    return local_batch_shapes(data_cfg, process_count, fields)


make_train_iterator = functools.partial(train_iterator, encoder=_Encode)
make_eval_iterator = functools.partial(eval_iterator, encoder=_Encode)
