"""SFT batches: prompt/completion or chat records -> masked, packed rows (grain).

Same fields as pretraining (`inputs, targets, segment_ids, positions, loss_mask`), so the
model and step are shared; the difference is `loss_mask`, which is 1 only where the
target is a completion (assistant) token of the same example.

Pipeline: validated records -> length pre-pass (over-long examples truncated or dropped
per `config.data.overlong`, counted) -> shuffle -> repeat -> per-process slice -> encode
-> pack (`config.data.packing`: first-fit packing of whole examples into rows of L+1
tokens, never splitting one; else one example per row) -> batch.

Packing isolation is the model's job: each example is its own segment, and the attention
mask never lets one segment see another; positions restart at 0 per example.
"""

from __future__ import annotations

from collections.abc import Mapping

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset

from align_jax.data.pipeline import PadAndSlice, check_config, local_shard, prefetch
from align_jax.data.records import SFTSource, encode_sft, length_prepass
from align_jax.data.sources import expand_files

FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def load_source(data_cfg, split: str, tokenizer):
    key = f"{split}_files"
    source = SFTSource(expand_files(data_cfg[key], f"config.data.{key}"), format=data_cfg.format)
    return length_prepass(
        source,
        lambda r: len(encode_sft(r, tokenizer, data_cfg)[0]),
        data_cfg.seq_len + 1,
        data_cfg.overlong,
        "config.data.overlong",
    )


def count_stats(source) -> dict[str, int]:
    return source.stats()


class _Encode(grain.transforms.Map):
    def __init__(self, tokenizer, data_cfg):
        self._tokenizer, self._cfg = tokenizer, data_cfg

    def map(self, record):
        tokens, mask = encode_sft(record, self._tokenizer, self._cfg)
        n = self._cfg.seq_len + 1
        return {"tokens": tokens[:n], "mask": mask[:n]}


class _PadOne(grain.transforms.Map):
    """One example per row: pad to L+1, segment 1 on real tokens."""

    def __init__(self, length: int):
        self._length = length

    def map(self, ex):
        n, pad = len(ex["tokens"]), self._length - len(ex["tokens"])
        return {
            "tokens": np.pad(ex["tokens"], (0, pad)),
            "mask": np.pad(ex["mask"], (0, pad)),
            "tokens_segment_ids": np.pad(np.ones(n, np.int32), (0, pad)),
            "tokens_positions": np.pad(np.arange(n, dtype=np.int32), (0, pad)),
        }


def _to_fields(row: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    tokens, seg, pos, mask = (
        row["tokens"],
        row["tokens_segment_ids"],
        row["tokens_positions"],
        row["mask"],
    )
    same = (seg[:-1] == seg[1:]) & (seg[1:] > 0)
    return {
        "inputs": tokens[:-1].astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "segment_ids": seg[:-1].astype(np.int32),
        "positions": pos[:-1].astype(np.int32),
        "loss_mask": (same & (mask[1:] > 0)).astype(np.float32),
    }


def _rows(ds: grain.MapDataset, data_cfg, tokenizer, bins: int, seed: int) -> grain.IterDataset:
    ds = ds.map(_Encode(tokenizer, data_cfg)).to_iter_dataset()
    length = data_cfg.seq_len + 1
    if data_cfg.packing:
        ds = FirstFitPackIterDataset(
            ds,
            length_struct={"tokens": length, "mask": length},
            num_packing_bins=bins,
            seed=seed,
            shuffle_bins=False,
        )
    else:
        ds = ds.map(_PadOne(length))
    return ds.map(_to_fields)


def make_train_iterator(
    data_cfg, tokenizer, *, seed: int, source, process_index=None, process_count=None
):
    check_config(data_cfg)
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source)
    if data_cfg.shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    ds = ds.repeat(data_cfg.num_epochs or None)[process_index::process_count]
    ds = _rows(ds, data_cfg, tokenizer, bins=local_batch, seed=seed)
    return iter(prefetch(ds.batch(local_batch, drop_remainder=True), data_cfg))


def make_eval_iterator(data_cfg, tokenizer, *, source, process_index=None, process_count=None):
    """One pass in file order; every process packs all of it and keeps its rows of each
    global batch (the same number of batches everywhere; the last padded with zero rows)."""
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = _rows(grain.MapDataset.source(source), data_cfg, tokenizer, bins=local_batch, seed=0)
    ds = ds.batch(data_cfg.batch_size, drop_remainder=False)
    lo = process_index * local_batch
    return iter(ds.map(PadAndSlice(data_cfg.batch_size, lo, lo + local_batch)))
