"""Pretraining batches: documents -> tokens -> packed rows -> local batches, as grain pipelines.

Train pipeline (`make_train_iterator`), in this order and why:

    DocumentSource -> shuffle(seed) -> repeat(num_epochs) -> slice[process::count]
      -> tokenize (+bos/eos) -> to_iter_dataset -> ConcatThenSplit(L+1) -> fields
      -> batch(local, drop_remainder) -> thread prefetch

- Everything up to `slice` is index arithmetic on a `MapDataset`, so the whole position of
  the pipeline is a few integers and `get_state`/`set_state` restore it exactly (no replay
  of the stream). Shuffling before repeating gives a different permutation per epoch
  without mixing epochs. Sharding after repeating splits one global document stream
  round-robin between processes: no document is dropped when the count does not divide,
  and within an epoch processes see disjoint documents.
- Packing (`grain.experimental.ConcatThenSplitIterDataset`) concatenates documents and
  cuts rows of L+1 tokens, never padding except at the very end of a finite stream. Each
  row gives `inputs = row[:-1]`, `targets = row[1:]`; the extra token is what makes every
  one of the L inputs have a next token.
- Every field is derived from the packer's per-row `segment_ids` (1, 2, ... in row order;
  0 is padding) and `positions` (restarting at 0 for every segment):
  `loss_mask = seg[:-1] == seg[1:] and seg[1:] > 0`, so a target is counted only when it
  is the next token of the same document. The pair (eos of one document, bos of the
  next) is never trained.

Seams (checked against grain 0.2.18's implementation and by tests/data):
- A document longer than what is left of a row is split: its head fills the row, and its
  tail starts the next row as a new segment (segment id 1) with positions restarting at 0
  and no bos. Rows are independent sequences, so the tail cannot attend to its head; the
  tail's first token is an input only, never a target (one lost prediction per split).
  A document longer than L+1 spans several rows the same way.
- The packer's checkpoint state holds tuples, which come back from JSON (grain's Orbax
  handler) as lists, and 0.2.18 then misreads an empty remainder as a real one and skips
  a document on restore. `_JsonSafePacking` turns them back into tuples; the Orbax test
  in tests/data covers it.

Multi-process: each process builds only its own batches (`batch_size // process_count`
rows) and `to_global_batch` assembles the global `jax.Array`s. With `num_epochs > 0` the
processes may run out one batch apart; training runs by step count, so prefer
`num_epochs = 0` on more than one process.

Eval pipeline (`make_eval_dataset`): one pass in file order, no shuffle or repeat. Every
process packs the *whole* eval set (identical row stream everywhere), batches it globally
and keeps its own slice of rows; the last global batch is padded with rows whose
segment_ids and loss_mask are 0. So every process yields the same number of batches,
which a multi-host eval needs (a process that stopped early would hang the others in the
collective); the price is that each process tokenizes all of the (small) eval set.

Read-ahead uses threads only (`read_threads`, `prefetch_batches`); grain's prefetch
iterators record the state of each element they hand out, so checkpoints stay exact.
Multiprocessing stays off: on a 2-core host the trainer needs the cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from align_jax.data.pipeline import PadAndSlice, check_config, local_shard, prefetch
from align_jax.data.sources import DataError, DocumentSource, expand_files
from align_jax.data.tokenizer import Tokenizer

FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


# --- public API ---------------------------------------------------------------------------


def load_source(
    data_cfg, split: str = "train", tokenizer: Tokenizer | None = None
) -> DocumentSource:
    """Indexes and validates `data_cfg.<split>_files` (split: "train" or "eval").

    `tokenizer` is unused here (documents are tokenized as they stream); the SFT and pair
    pipelines take it for their length pre-pass, and the loop calls all three alike."""
    del tokenizer
    key = f"{split}_files"
    files = expand_files(data_cfg[key], f"config.data.{key}")
    return DocumentSource(files, format=data_cfg.format, text_field=data_cfg.text_field)


def count_stats(source: DocumentSource) -> dict[str, int]:
    """{files, documents, skipped_empty} of a source, for the trainer to log once."""
    return source.stats()


def make_train_dataset(
    data_cfg,
    tokenizer: Tokenizer,
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    source: DocumentSource | None = None,
) -> grain.IterDataset:
    """The train pipeline as a grain IterDataset; see the module docstring for its stages."""
    check_config(data_cfg)
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source if source is not None else load_source(data_cfg))
    if data_cfg.shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    ds = ds.repeat(data_cfg.num_epochs or None)
    ds = ds[process_index::process_count]
    ds = _tokenized_rows(ds, data_cfg, tokenizer)
    ds = ds.batch(local_batch, drop_remainder=True)
    return prefetch(ds, data_cfg)


def make_train_iterator(
    data_cfg,
    tokenizer: Tokenizer,
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    source: DocumentSource | None = None,
) -> grain.DatasetIterator:
    """This process's train batches: dicts of numpy arrays [batch_size // process_count, L].

    Fields: inputs, targets, segment_ids, positions (int32) and loss_mask (float32).
    Checkpointable: `get_state`/`set_state`, or Orbax with `grain.checkpoint.CheckpointSave`
    / `CheckpointRestore`. `process_index`/`process_count` default to jax's.
    """
    return iter(
        make_train_dataset(
            data_cfg,
            tokenizer,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            source=source,
        )
    )


def make_eval_dataset(
    data_cfg,
    tokenizer: Tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    source: DocumentSource | None = None,
) -> grain.IterDataset:
    """One deterministic pass over eval_files; each `iter()` of it is a fresh pass.

    Keep the dataset and iterate it at every eval: the files are indexed only once.
    Same fields as training; the last batch is padded to full size with rows whose
    segment_ids and loss_mask are 0.
    """
    check_config(data_cfg)
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source if source is not None else load_source(data_cfg, "eval"))
    ds = _tokenized_rows(ds, data_cfg, tokenizer)
    ds = ds.batch(data_cfg.batch_size, drop_remainder=False)
    lo = process_index * local_batch
    ds = ds.map(PadAndSlice(data_cfg.batch_size, lo, lo + local_batch))
    return prefetch(ds, data_cfg)


def make_eval_iterator(
    data_cfg,
    tokenizer: Tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    source: DocumentSource | None = None,
) -> grain.DatasetIterator:
    """A fresh pass of `make_eval_dataset` (re-indexes the files unless `source` is given)."""
    return iter(
        make_eval_dataset(
            data_cfg,
            tokenizer,
            process_index=process_index,
            process_count=process_count,
            source=source,
        )
    )


# --- stages -------------------------------------------------------------------------------


def _tokenized_rows(ds: grain.MapDataset, data_cfg, tokenizer: Tokenizer) -> grain.IterDataset:
    """Documents -> packed rows of model fields (unbatched)."""
    ds = ds.map(_Tokenize(tokenizer, add_bos=data_cfg.add_bos, add_eos=data_cfg.add_eos))
    threads = int(data_cfg.get("read_threads", 0))
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=16 * threads)
    )
    ds = _JsonSafePacking(
        ConcatThenSplitIterDataset(ds, length_struct={"tokens": data_cfg.seq_len + 1})
    )
    return ds.map(_to_fields)


class _Tokenize(grain.transforms.Map):
    def __init__(self, tokenizer: Tokenizer, *, add_bos: bool, add_eos: bool):
        for flag, name, token_id in (
            (add_bos, "add_bos", tokenizer.bos_id),
            (add_eos, "add_eos", tokenizer.eos_id),
        ):
            if flag and token_id < 0:
                raise DataError(
                    f"config.data.{name}=True but {tokenizer.path} has no {name[4:]} token; "
                    f"expected a tokenizer with one, or set config.data.{name}=False"
                )
        self._tokenizer = tokenizer
        self._prefix = [tokenizer.bos_id] if add_bos else []
        self._suffix = [tokenizer.eos_id] if add_eos else []

    def map(self, text: str) -> dict[str, np.ndarray]:
        ids = self._prefix + self._tokenizer.encode(text) + self._suffix
        return {"tokens": np.asarray(ids, np.int32)}


def _to_fields(row: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    tokens, seg, pos = row["tokens"], row["tokens_segment_ids"], row["tokens_positions"]
    return {
        "inputs": tokens[:-1].astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "segment_ids": seg[:-1].astype(np.int32),
        "positions": pos[:-1].astype(np.int32),
        "loss_mask": ((seg[:-1] == seg[1:]) & (seg[1:] > 0)).astype(np.float32),
    }


def _tuples(state: Any) -> Any:
    """The packer's state with its (start, stop) slices as tuples again (see module doc)."""
    state = dict(state)
    state["remainder_slices"] = {k: tuple(v) for k, v in state["remainder_slices"].items()}
    return state


class _JsonSafePacking(grain.IterDataset):
    def __iter__(self) -> grain.DatasetIterator:
        return _JsonSafePackingIterator(self._parent.__iter__())


class _JsonSafePackingIterator(grain.DatasetIterator):
    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(_tuples(state))
