"""Pretraining batches: documents -> tokens -> packed rows -> local batches, as grain pipelines.

Train pipeline (`make_train_dataset`; align_jax/data/pipeline.py has the shared stages):

    DocumentSource -> shuffle(seed) -> repeat(num_epochs) -> for each of this process's
      rows r: documents [r::batch_size] -> tokenize (+bos/eos) -> ConcatThenSplit(L+1)
      -> fields;  one row from each stream per batch -> thread prefetch

- Row streams (`pipeline.row_stream_dataset`): row r of every global batch packs its own
  stream of documents, r, r + batch_size, r + 2·batch_size, ... of the global shuffled
  stream. A process builds only its rows' streams, so it reads and tokenizes only its
  share of the documents, and the global batches are the same whatever the number of
  processes (1 × 8 devices and 2 × 4 give the same losses). Within an epoch the streams
  hold disjoint documents.
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

Multi-process: each process builds only its own rows (`batch_size // process_count`)
and `to_global_batch` assembles the global `jax.Array`s. With `num_epochs > 0` the streams
end a few rows apart and the batches stop at the first to end; training runs by step
count, so prefer `num_epochs = 0` on more than one process.

Eval pipeline (`make_eval_dataset`): one pass in file order, no shuffle or repeat. Every
process packs the *whole* eval set (identical row stream everywhere), batches it globally
and keeps its own slice of rows; the last global batch is padded with rows whose
segment_ids and loss_mask are 0. The price of every process yielding the same number of
batches is that each process tokenizes all of the (small) eval set.

`batch_shapes(data_cfg)`: both pipelines' batch fields, shapes and dtypes, from the config.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from align_jax.data.pipeline import (
    LM_DTYPES,
    eval_dataset,
    lm_fields,
    lm_specs,
    local_batch_shapes,
    row_stream_dataset,
)
from align_jax.data.records import special_ids
from align_jax.data.sources import DocumentSource, expand_files
from align_jax.data.tokenizer import Tokenizer

FIELDS = tuple(LM_DTYPES)


def load_source(
    data_cfg, split: str = "train", tokenizer: Tokenizer | None = None
) -> DocumentSource:
    """Indexes and validates `data_cfg.<split>_files` (split: "train" or "eval").

    `tokenizer` is unused here (documents are tokenized as they stream); the other batch
    kinds take it for their length pre-pass, and the loop calls every kind alike."""
    del tokenizer
    key = f"{split}_files"
    files = expand_files(data_cfg[key], f"config.data.{key}")
    return DocumentSource(files, format=data_cfg.format, text_field=data_cfg.text_field)


def make_train_dataset(
    data_cfg, tokenizer: Tokenizer, *, seed: int, source: DocumentSource | None = None, **shard
) -> grain.IterDataset:
    """This process's train batches: dicts of numpy arrays [batch_size // process_count, L].

    Fields: inputs, targets, segment_ids, positions (int32) and loss_mask (float32).
    `source` defaults to `load_source(data_cfg)`; `shard`: process_index / process_count
    (default jax's). Its iterators are checkpointable: `get_state`/`set_state`, or Orbax
    with `grain.checkpoint.CheckpointSave` / `CheckpointRestore`.
    """
    source = source if source is not None else load_source(data_cfg)
    return row_stream_dataset(
        data_cfg, tokenizer, seed=seed, source=source, encoder=_Tokenize, pack=_pack, **shard
    )


def make_eval_dataset(
    data_cfg, tokenizer: Tokenizer, *, source: DocumentSource | None = None, **shard
) -> grain.IterDataset:
    """One deterministic pass over eval_files; each `iter()` of it is a fresh pass.

    Keep the dataset and iterate it at every eval: the files are indexed only once.
    Same fields as training; the last batch is padded to full size with rows whose
    segment_ids and loss_mask are 0.
    """
    source = source if source is not None else load_source(data_cfg, "eval")
    return eval_dataset(data_cfg, tokenizer, source=source, encoder=_Tokenize, pack=_pack, **shard)


def make_train_iterator(data_cfg, tokenizer: Tokenizer, **kwargs) -> grain.DatasetIterator:
    """`iter(make_train_dataset(data_cfg, tokenizer, **kwargs))`."""
    return iter(make_train_dataset(data_cfg, tokenizer, **kwargs))


def make_eval_iterator(data_cfg, tokenizer: Tokenizer, **kwargs) -> grain.DatasetIterator:
    """A fresh pass of `make_eval_dataset` (re-indexes the files unless `source` is given)."""
    return iter(make_eval_dataset(data_cfg, tokenizer, **kwargs))


def batch_shapes(data_cfg, process_count: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """This process's train and eval batches: every field [batch_size // process_count,
    seq_len] (`process_count` defaults to jax's)."""
    return local_batch_shapes(data_cfg, process_count, lm_specs(data_cfg.seq_len))


class _Tokenize(grain.transforms.Map):
    def __init__(self, tokenizer: Tokenizer, data_cfg, source: DocumentSource):
        del source  # every document tokenizes alike
        self._tokenizer = tokenizer
        self._bos, self._eos = special_ids(
            tokenizer, add_bos=data_cfg.add_bos, add_eos=data_cfg.add_eos
        )

    def map(self, text: str) -> dict[str, np.ndarray]:
        ids = self._bos + self._tokenizer.encode(text) + self._eos
        return {"tokens": np.asarray(ids, np.int32)}


def _pack(docs: grain.IterDataset, data_cfg, rows_per_batch: int) -> grain.IterDataset:
    """Documents -> packed rows of L+1 tokens as model fields (see the module docstring)."""
    del rows_per_batch  # concatenate-then-split needs no packing bins
    rows = ConcatThenSplitIterDataset(docs, length_struct={"tokens": data_cfg.seq_len + 1})
    return _JsonSafePacking(rows).map(lm_fields)


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
