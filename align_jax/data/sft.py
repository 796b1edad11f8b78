"""SFT batches: prompt/completion or chat records -> masked, packed rows (grain).

Same fields as pretraining (`inputs, targets, segment_ids, positions, loss_mask`), so the
model and step are shared; the difference is `loss_mask`, which is 1 only where the
target is a completion (assistant) token of the same example.

Pipeline (align_jax/data/pipeline.py): validated records -> length pre-pass (over-long
examples truncated or dropped per `config.data.overlong`, counted) -> shuffle -> repeat ->
per-process slice -> encode -> pack (`config.data.packing`: first-fit packing of whole
examples into rows of L+1 tokens, never splitting one; else one example per row) -> batch.

Packing isolation is the model's job: each example is its own segment, and the attention
mask never lets one segment see another; positions restart at 0 per example.

The loop's interface is as in align_jax/data/pairs.py, without `ref_table`;
`batch_shapes(data_cfg)` gives both pipelines' batch fields, shapes and dtypes.
"""

from __future__ import annotations

import functools

import grain
import jax
import numpy as np
from grain.experimental import FirstFitPackIterDataset

from align_jax.data.pipeline import (
    Examples,
    eval_iterator,
    lm_fields,
    lm_specs,
    local_batch_shapes,
    pad_row,
    split_records,
    train_iterator,
)
from align_jax.data.records import SFTRecords, encode_sft


def load_source(data_cfg, split: str, tokenizer) -> Examples:
    return Examples(
        split_records(data_cfg, split, SFTRecords()),
        lambda r: len(encode_sft(r, tokenizer, data_cfg)[0]),
        data_cfg.seq_len + 1,
        data_cfg.overlong,
    )


def batch_shapes(data_cfg, process_count: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """This process's train and eval batches, packed or not: every field
    [batch_size // process_count, seq_len] (`process_count` defaults to jax's)."""
    return local_batch_shapes(data_cfg, process_count, lm_specs(data_cfg.seq_len))


class _Encode(grain.transforms.Map):
    def __init__(self, tokenizer, data_cfg, source: Examples):
        del source  # every record encodes alike
        self._tokenizer, self._cfg = tokenizer, data_cfg

    def map(self, record):
        tokens, mask = encode_sft(record, self._tokenizer, self._cfg)
        n = self._cfg.seq_len + 1
        return {"tokens": tokens[:n], "mask": mask[:n]}


def _pack(examples: grain.IterDataset, data_cfg, rows_per_batch: int) -> grain.IterDataset:
    """Examples -> rows of L+1 tokens as model fields: first-fit packed into as many rows as
    a batch has (`config.data.packing`), else one example per row."""
    length = data_cfg.seq_len + 1
    if data_cfg.packing:
        rows = FirstFitPackIterDataset(
            examples,
            length_struct={"tokens": length, "mask": length},
            num_packing_bins=rows_per_batch,
            shuffle_bins=False,
        )
    else:
        rows = examples.map(_OnePerRow(length))
    return rows.map(lm_fields)


class _OnePerRow(grain.transforms.Map):
    """An example padded to a row of its own, in the packer's field names."""

    def __init__(self, length: int):
        self._length = length

    def map(self, example):
        row = pad_row(example["tokens"], example["mask"], self._length)
        seg = row["segment_ids"]
        positions = np.arange(self._length, dtype=np.int32) * seg
        return {
            "tokens": row["tokens"],
            "mask": row["mask"],
            "tokens_segment_ids": seg,
            "tokens_positions": positions,
        }


# The eval pass packs the whole split on every process and keeps its rows of each global
# batch (the same number of batches everywhere).
make_train_iterator = functools.partial(train_iterator, encoder=_Encode, pack=_pack)
make_eval_iterator = functools.partial(eval_iterator, encoder=_Encode, pack=_pack)
