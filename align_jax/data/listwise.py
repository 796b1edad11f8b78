"""Listwise batches: K ranked or scored responses per prompt (grain).

Each record (`align_jax.data.records.ListSource`: `prompt`, `responses`, `ranks` or `scores`)
becomes K = `config.data.list_size` rows of `seq_len` tokens, `bos + prompt + response + eos`,
right-padded, in ranked order (best first):

- `tokens`, `mask` (1 on response tokens), `segment_ids` (1 on real tokens): [K, L]
- `list_mask` [K]: 1 on real responses; a list shorter than K is padded with empty rows
- `ranks` [K] int32: 1 + the number of strictly better responses (0 on padding), so metrics
  can leave tied pairs out
- `scores` [K] (only when every record of the split has `scores`; 0 on padding)
- `valid` (0 for eval padding), `index` (the record's position in the source)

A list longer than K keeps its best K (counted as `lists_cut`). Over-long rows are truncated
at the end or the whole list is dropped (`config.data.overlong`), counted. Lists are not
packed: a list's K rows go through the model in one concatenated batch.
"""

from __future__ import annotations

import grain
import numpy as np

from align_jax.data.pairs import _WithIndex
from align_jax.data.pipeline import PadAndSlice, check_config, local_shard, prefetch
from align_jax.data.records import ListSource, encode_list, length_prepass
from align_jax.data.sources import expand_files


def load_source(data_cfg, split: str, tokenizer):
    key = f"{split}_files"
    source = ListSource(
        expand_files(data_cfg[key], f"config.data.{key}"),
        format=data_cfg.format,
        list_size=data_cfg.list_size,
    )
    view = length_prepass(
        source,
        lambda record: max(len(t) for t, _ in encode_list(record, tokenizer, data_cfg)),
        data_cfg.seq_len,
        data_cfg.overlong,
        "config.data.overlong",
    )
    out = _WithIndex(view)
    out.scored = source.counts["scored"] == len(source)
    return out


def count_stats(source) -> dict[str, int]:
    return source.stats()


class _Encode(grain.transforms.Map):
    def __init__(self, tokenizer, data_cfg, scored: bool, ref_table=None):
        self._tokenizer, self._cfg, self._scored, self._ref = tokenizer, data_cfg, scored, ref_table

    def map(self, record):
        k, length = self._cfg.list_size, self._cfg.seq_len
        tokens = np.zeros((k, length), np.int32)
        mask = np.zeros((k, length), np.float32)
        segment_ids = np.zeros((k, length), np.int32)
        for i, (t, m) in enumerate(encode_list(record, self._tokenizer, self._cfg)):
            n = min(len(t), length)
            tokens[i, :n], mask[i, :n], segment_ids[i, :n] = t[:n], m[:n], 1
        n = len(record["responses"])
        out = {
            "tokens": tokens,
            "mask": mask,
            "segment_ids": segment_ids,
            "list_mask": (np.arange(k) < n).astype(np.float32),
            "ranks": np.pad(np.asarray(record["ranks"], np.int32), (0, k - n)),
            "valid": np.float32(1.0),
            "index": np.int32(record["_index"]),
        }
        if self._scored:
            out["scores"] = np.pad(np.asarray(record["scores"], np.float32), (0, k - n))
        if self._ref is not None:
            out["ref_logps"] = np.asarray(self._ref[record["_index"]], np.float32)
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
    """Train batches; `ref_table` [N, K] float32 (reference log-probs of each record's
    responses in ranked order) adds a `ref_logps` [K] field."""
    check_config(data_cfg)
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source)
    if data_cfg.shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    ds = ds.repeat(data_cfg.num_epochs or None)[process_index::process_count]
    ds = ds.map(_Encode(tokenizer, data_cfg, source.scored, ref_table))
    ds = ds.batch(local_batch, drop_remainder=True)
    return iter(prefetch(ds.to_iter_dataset(), data_cfg))


def make_eval_iterator(
    data_cfg, tokenizer, *, source, process_index=None, process_count=None, ref_table=None
):
    """One pass in file order; the last global batch is padded with `valid = 0` lists."""
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source).map(_Encode(tokenizer, data_cfg, source.scored, ref_table))
    ds = ds.batch(data_cfg.batch_size, drop_remainder=False)
    lo = process_index * local_batch
    return iter(ds.map(PadAndSlice(data_cfg.batch_size, lo, lo + local_batch)))
