"""Preference-pair batches for reward models and the DPO family (grain).

Each pair becomes two rows of `seq_len` tokens, `bos + prompt + completion + eos`, right-
padded: `chosen_tokens`, `chosen_mask` (1 on completion tokens), `chosen_segment_ids`
(1 on real tokens, 0 on padding), the same for `rejected_*`, and per pair `margin`
(default 0), `label` (default 1.0: chosen preferred) and `valid` (0 for eval padding).
Pairs are not packed: a pair's two rows go through the model in one concatenated batch.
Over-long pairs are truncated at the end or dropped (`config.data.overlong`), counted.
"""

from __future__ import annotations

import grain
import numpy as np

from align_jax.data.pipeline import PadAndSlice, check_config, local_shard, prefetch
from align_jax.data.records import PairSource, encode_completion, length_prepass
from align_jax.data.sources import expand_files

SIDES = ("chosen", "rejected")


def load_source(data_cfg, split: str, tokenizer):
    key = f"{split}_files"
    source = PairSource(
        expand_files(data_cfg[key], f"config.data.{key}"),
        format=data_cfg.format,
        drop_identical=data_cfg.drop_identical_pairs,
    )

    def longest(record):
        return max(
            len(encode_completion(record["prompt"], record[s], tokenizer, data_cfg)[0])
            for s in SIDES
        )

    view = length_prepass(
        source, longest, data_cfg.seq_len, data_cfg.overlong, "config.data.overlong"
    )
    return _WithIndex(view)


class _WithIndex:
    """Records carry their index in the source: precomputed reference log-probs are looked
    up by it, whatever order shuffling brings them in."""

    def __init__(self, view):
        self.view, self.paths, self.stats = view, view.paths, view.stats

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i):
        return {**self.view[i], "_index": int(i)}


def count_stats(source) -> dict[str, int]:
    return source.stats()


class _Encode(grain.transforms.Map):
    def __init__(self, tokenizer, data_cfg, ref_table=None):
        self._tokenizer, self._cfg, self._ref = tokenizer, data_cfg, ref_table

    def map(self, record):
        length = self._cfg.seq_len
        out = {}
        for side in SIDES:
            tokens, mask = encode_completion(
                record["prompt"], record[side], self._tokenizer, self._cfg
            )
            tokens, mask = tokens[:length], mask[:length]
            pad = length - len(tokens)
            out[f"{side}_tokens"] = np.pad(tokens, (0, pad)).astype(np.int32)
            out[f"{side}_mask"] = np.pad(mask, (0, pad)).astype(np.float32)
            out[f"{side}_segment_ids"] = np.pad(np.ones(len(tokens), np.int32), (0, pad))
        out["margin"] = np.float32(record.get("margin", 0.0))
        out["label"] = np.float32(record.get("label", 1.0))
        out["valid"] = np.float32(1.0)
        out["index"] = np.int32(record["_index"])
        if self._ref is not None:
            out["ref_chosen_logps"], out["ref_rejected_logps"] = self._ref[record["_index"]]
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
    """Train batches; `ref_table` [N, 2] float32 (reference log-probs of chosen and rejected
    per source index) adds `ref_chosen_logps` / `ref_rejected_logps` fields."""
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
    """One pass in file order; the last global batch is padded with `valid = 0` pairs."""
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source).map(_Encode(tokenizer, data_cfg, ref_table))
    ds = ds.batch(data_cfg.batch_size, drop_remainder=False)
    lo = process_index * local_batch
    return iter(ds.map(PadAndSlice(data_cfg.batch_size, lo, lo + local_batch)))
