"""Unpaired batches for KTO: one completion per prompt with a desirable / undesirable label.

Each record (`align_jax.data.records.UnpairedSource`: `prompt`, `completion`, `label`)
becomes one row of `seq_len` tokens, `bos + prompt + completion + eos`, right-padded:
`tokens`, `mask` (1 on completion tokens, contiguous after the prompt), `segment_ids` (1 on
real tokens), and per example `label` (1.0 desirable, 0.0 undesirable), `valid` (0 for eval
padding) and `index`. Over-long examples are truncated at the end or dropped
(`config.data.overlong`), counted; the start-up log counts desirable and undesirable ones.

KTO's mismatched pairs (each prompt with another example's completion) are built in the
train step from these rows (align_jax/objectives/kto.py), so they pair the completions of
the batch actually being trained on.
"""

from __future__ import annotations

import grain
import numpy as np

from align_jax.data.pairs import _WithIndex
from align_jax.data.pipeline import PadAndSlice, check_config, local_shard, prefetch
from align_jax.data.records import UnpairedSource, encode_completion, length_prepass
from align_jax.data.sources import expand_files


def load_source(data_cfg, split: str, tokenizer):
    key = f"{split}_files"
    source = UnpairedSource(
        expand_files(data_cfg[key], f"config.data.{key}"), format=data_cfg.format
    )
    view = length_prepass(
        source,
        lambda r: len(encode_completion(r["prompt"], r["completion"], tokenizer, data_cfg)[0]),
        data_cfg.seq_len,
        data_cfg.overlong,
        "config.data.overlong",
    )
    return _WithIndex(view)


def count_stats(source) -> dict[str, int]:
    return source.stats()


class _Encode(grain.transforms.Map):
    def __init__(self, tokenizer, data_cfg, ref_table=None):
        self._tokenizer, self._cfg, self._ref = tokenizer, data_cfg, ref_table

    def map(self, record):
        length = self._cfg.seq_len
        tokens, mask = encode_completion(
            record["prompt"], record["completion"], self._tokenizer, self._cfg
        )
        tokens, mask = tokens[:length], mask[:length]
        pad = length - len(tokens)
        out = {
            "tokens": np.pad(tokens, (0, pad)).astype(np.int32),
            "mask": np.pad(mask, (0, pad)).astype(np.float32),
            "segment_ids": np.pad(np.ones(len(tokens), np.int32), (0, pad)),
            "label": np.float32(record["label"]),
            "valid": np.float32(1.0),
            "index": np.int32(record["_index"]),
        }
        if self._ref is not None:
            out["ref_logps"] = np.float32(self._ref[record["_index"]][0])
        return out


def make_train_iterator(
    data_cfg,
    tokenizer,
    *,
    seed: int,
    source,
    process_index=None,
    process_count=None,
    ref_table=None,
):
    """Train batches; `ref_table` [N, 2] float32 (column 0: the reference log-prob of each
    record's completion) adds a `ref_logps` field."""
    check_config(data_cfg)
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source)
    if data_cfg.shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    ds = ds.repeat(data_cfg.num_epochs or None)[process_index::process_count]
    ds = ds.map(_Encode(tokenizer, data_cfg, ref_table)).batch(local_batch, drop_remainder=True)
    return iter(prefetch(ds.to_iter_dataset(), data_cfg))


def make_eval_iterator(
    data_cfg, tokenizer, *, source, process_index=None, process_count=None, ref_table=None
):
    """One pass in file order; the last global batch is padded with `valid = 0` examples."""
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source).map(_Encode(tokenizer, data_cfg, ref_table))
    ds = ds.batch(data_cfg.batch_size, drop_remainder=False)
    lo = process_index * local_batch
    return iter(ds.map(PadAndSlice(data_cfg.batch_size, lo, lo + local_batch)))
