"""Pipeline building blocks every batch kind shares (pretraining, SFT, pairs, lists, unpaired).

Each batch kind's module keeps only its own encoding: an `encoder` (a grain Map from one
record to one example) and, for packed kinds, a `pack` (examples -> rows). What is common
lives here:

- `train_dataset` / `eval_dataset` (and their iterators, the loop's interface): the grain
  pipelines around an encoding. Train, one example per row:

      source -> shuffle(seed) -> repeat(num_epochs) -> this process's share -> encode
        -> batch(rows per process, drop_remainder) -> thread prefetch

  Everything up to the share is index arithmetic on a `MapDataset`, so the whole position
  of the pipeline is a few integers and `get_state`/`set_state` restore it exactly.
  Shuffling before repeating gives a different permutation per epoch without mixing epochs.
  The share is contiguous (`ContiguousShare`): of every global batch of `batch_size`
  records, process p reads only records [p·b, (p+1)·b) (b = batch_size / processes), the
  rows its devices hold of the global batch. A global batch is therefore the same records
  in the same order on any number of processes: a function of the data, the seed and the
  batch size alone. A last partial global batch is dropped on every process alike.
  Packed kinds (SFT with `packing`) pack the global record stream into global batches on
  every process and keep their rows, since packing depends on every record before it.
  Eval is one pass in file order: every process builds every global batch (the last
  padded with zero rows) and keeps its own rows, so every process yields the same number
  of batches, which a multi-host eval needs (a process that stopped early would hang the
  others).
- `row_stream_dataset`: pretraining's pipeline, where a global batch's row r packs its own
  stream of documents (r, r + batch_size, r + 2·batch_size, ... of the shuffled stream), so
  each process reads and tokenizes only the documents of its rows.
- `Examples`: a split's records after the length pre-pass, each carrying its index, by
  which precomputed reference log-probs (`ref_table`) are looked up.
- the config checks, the per-process shard of a global batch, padding and slicing of a
  global batch into a process's rows, row padding to a fixed width, the language-model
  fields of a packed row, thread prefetch, and assembling the global `jax.Array`s.
- `local_batch_shapes`: a process's batch shapes from the config alone, so the loop can
  shard and compile before it draws a batch; each kind's `batch_shapes` names its fields
  (the row fields' dtypes are defined once here, next to the code that builds the rows).

Read-ahead uses threads only (`config.data.read_threads`, `prefetch_batches`); grain's
prefetch iterators record the state of each element they hand out, so checkpoints stay
exact. Multiprocessing stays off: on a 2-core host the trainer needs the cores.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import numpy as np
from grain.experimental import ThreadPrefetchDatasetIterator

from align_jax.data.sources import DataError, RecordKind, RecordSource, expand_files

# (tokenizer, config.data, source) -> the grain Map that encodes one of `source`'s records.
# An encoder class may name `ref_fields`: the batch fields a `ref_table`'s columns become.
Encoder = Callable[[Any, Any, Any], grain.transforms.Map]
# (a process's encoded examples, config.data, rows per batch) -> rows.
Pack = Callable[[grain.IterDataset, Any, int], grain.IterDataset]
# A batch field as one row has it: (shape without the batch dimension, dtype).
FieldSpec = tuple[tuple[int, ...], Any]

# The fields of a padded example (`pad_row`), each [length].
ROW_DTYPES = {"tokens": np.int32, "mask": np.float32, "segment_ids": np.int32}
# The model's fields of a packed row (`lm_fields`), each [seq_len].
LM_DTYPES = {
    "inputs": np.int32,
    "targets": np.int32,
    "segment_ids": np.int32,
    "positions": np.int32,
    "loss_mask": np.float32,
}
# The dtype of the per-row fields a `ref_table`'s columns become.
REF_DTYPE = np.float32


def train_dataset(
    data_cfg, tokenizer, *, seed: int, source, process_index=None, process_count=None, **encoding
) -> grain.IterDataset:
    """This process's train batches from `source` (see the module docstring for the stages).

    `encoding`: `encoder`, optional `pack` (without it each example is a row) and `ref_table`.
    `process_index` / `process_count` default to jax's.
    """
    check_config(data_cfg)
    if encoding.get("pack") is None:
        ds, local_batch = shuffled_share(source, data_cfg, seed, process_index, process_count)
        ds = _batches(
            ds, data_cfg, tokenizer, source, local_batch, local_batch, drop_last=True, **encoding
        )
        return prefetch(ds, data_cfg)
    # Packed: the global stream packed into global batches everywhere, each process's rows kept.
    process_index, _, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = _batches(
        shuffled(source, data_cfg, seed), data_cfg, tokenizer, source, data_cfg.batch_size,
        data_cfg.batch_size, drop_last=True, **encoding,
    )  # fmt: skip
    lo = process_index * local_batch
    return prefetch(ds.map(PadAndSlice(data_cfg.batch_size, lo, lo + local_batch)), data_cfg)


def shuffled(source, data_cfg, seed: int) -> grain.MapDataset:
    """`source` shuffled per epoch from `seed` (with `data_cfg.shuffle`) and repeated
    `num_epochs` times or forever: the global record stream of a train split."""
    ds = grain.MapDataset.source(source)
    if data_cfg.shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    return ds.repeat(data_cfg.num_epochs or None)


def shuffled_share(
    source, data_cfg, seed: int, process_index=None, process_count=None
) -> tuple[grain.MapDataset, int]:
    """(this process's contiguous share of the global record stream (`shuffled`), the
    per-process batch size): what every unpacked train split does before its batch kind
    encodes and batches it."""
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    share = ContiguousShare(
        shuffled(source, data_cfg, seed), data_cfg.batch_size, process_index, process_count
    )
    return share, local_batch


class ContiguousShare(grain.MapDataset):
    """Process `index`'s rows of every global batch of `global_batch` consecutive elements
    of `parent`: elements [index·b, (index+1)·b) of each, b = global_batch / count. A last
    partial global batch is left out, so every process has the same length."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._global, self._local = global_batch, global_batch // count
        self._offset = index * self._local

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._local

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        k, r = divmod(int(j), self._local)
        return self._parent[k * self._global + self._offset + r]

    def __str__(self) -> str:
        return f"ContiguousShare(global_batch={self._global}, rows={self._offset}+{self._local})"


def row_stream_dataset(
    data_cfg, tokenizer, *, seed: int, source, encoder: Encoder, pack: Pack,
    process_index=None, process_count=None,
) -> grain.IterDataset:  # fmt: skip
    """Train batches whose global row r is the r-th of `batch_size` packed streams: stream r
    packs elements r, r + batch_size, ... of the global stream (`shuffled`), and this
    process builds only its rows' streams. The global batch is then independent of the
    number of processes, and each process encodes only 1 / processes of the data. Batches
    end when the first of this process's streams does."""
    check_config(data_cfg)
    process_index, _, local_batch = local_shard(data_cfg, process_index, process_count)
    docs = shuffled(source, data_cfg, seed)
    encode = encoder(tokenizer, data_cfg, source)
    first = process_index * local_batch
    streams = [
        pack(
            docs[r :: data_cfg.batch_size].map(encode).to_iter_dataset(read_options(data_cfg)),
            data_cfg,
            1,
        )
        for r in range(first, first + local_batch)
    ]
    return prefetch(_StackRows(streams), data_cfg)


class _StackRows(grain.IterDataset):
    """One row from each parent per batch, stacked in parent order."""

    def __iter__(self) -> grain.DatasetIterator:
        return _StackRowsIterator([p.__iter__() for p in self._parents])


class _StackRowsIterator(grain.DatasetIterator):
    def __next__(self) -> dict[str, np.ndarray]:
        rows = [next(p) for p in self._parents]
        return {name: np.stack([row[name] for row in rows]) for name in rows[0]}

    def get_state(self) -> dict[str, Any]:
        return {"streams": [p.get_state() for p in self._parents]}

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["streams"]) != len(self._parents):
            raise DataError(
                f"the saved data position holds {len(state['streams'])} row streams; this "
                f"process builds {len(self._parents)}: resume with the batch size and number "
                "of processes the run was saved with"
            )
        for parent, s in zip(self._parents, state["streams"], strict=True):
            parent.set_state(s)


def eval_dataset(
    data_cfg, tokenizer, *, source, process_index=None, process_count=None, **encoding
) -> grain.IterDataset:
    """One pass over `source` in file order, each `iter()` a fresh one; arguments as for
    `train_dataset`. The last global batch is padded with zero rows (`valid`, `segment_ids`,
    `loss_mask` 0)."""
    check_config(data_cfg)
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source)
    size = data_cfg.batch_size  # the global batch: every process builds all of it
    ds = _batches(ds, data_cfg, tokenizer, source, size, local_batch, drop_last=False, **encoding)
    lo = process_index * local_batch
    return prefetch(ds.map(PadAndSlice(data_cfg.batch_size, lo, lo + local_batch)), data_cfg)


def train_iterator(data_cfg, tokenizer, **kwargs) -> grain.DatasetIterator:
    """`iter(train_dataset(...))`; checkpointable with `get_state` / `set_state`, or Orbax
    with `grain.checkpoint.CheckpointSave` / `CheckpointRestore`."""
    return iter(train_dataset(data_cfg, tokenizer, **kwargs))


def eval_iterator(data_cfg, tokenizer, **kwargs) -> grain.DatasetIterator:
    """`iter(eval_dataset(...))`: a fresh eval pass."""
    return iter(eval_dataset(data_cfg, tokenizer, **kwargs))


def _batches(
    records: grain.MapDataset,
    data_cfg,
    tokenizer,
    source,
    size: int,
    local_batch: int,
    *,
    drop_last: bool,
    encoder: Encoder,
    pack: Pack | None = None,
    ref_table: np.ndarray | None = None,
) -> grain.IterDataset:
    """Batches of `size` rows of encoded `records` (`local_batch`: the rows per process)."""
    encode = encoder(tokenizer, data_cfg, source)
    examples = records.map(encode)
    if ref_table is not None:
        examples = examples.map(_Reference(ref_table, encode.ref_fields))
    if pack is None:
        # Batched by index, so the iterator's checkpoint state is a batch count.
        batches = examples.batch(size, drop_remainder=drop_last)
        return batches.to_iter_dataset(read_options(data_cfg))
    rows = pack(examples.to_iter_dataset(read_options(data_cfg)), data_cfg, local_batch)
    return rows.batch(size, drop_remainder=drop_last)


def read_options(data_cfg) -> grain.ReadOptions:
    """Threads that read and encode records ahead (`config.data.read_threads`; 0: inline)."""
    threads = int(data_cfg.get("read_threads", 0))
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=16 * threads)


def check_config(data_cfg) -> None:
    """Sizes every batch kind needs: positive seq_len and batch_size, num_epochs >= 0."""
    for key in ("seq_len", "batch_size"):
        if int(data_cfg[key]) <= 0:
            raise DataError(f"config.data.{key}={data_cfg[key]}; expected a positive integer")
    if int(data_cfg.num_epochs) < 0:
        raise DataError(
            f"config.data.num_epochs={data_cfg.num_epochs}; expected 0 (forever) or more"
        )


def local_shard(data_cfg, process_index, process_count) -> tuple[int, int, int]:
    """(this process's index, the process count, its rows per batch); None means jax's own."""
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    if not 0 <= process_index < process_count:
        raise DataError(
            f"process_index={process_index}; expected 0 <= index < process_count={process_count}"
        )
    if data_cfg.batch_size % process_count:
        raise DataError(
            f"config.data.batch_size={data_cfg.batch_size} is the global batch; expected a "
            f"multiple of the process count {process_count}"
        )
    return process_index, process_count, data_cfg.batch_size // process_count


def local_batch_shapes(
    data_cfg,
    process_count: int | None,
    fields: Mapping[str, FieldSpec],
    ref_fields: tuple[str, ...] = (),
) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of the batches this process's iterators yield, train and eval alike:
    `fields` (name -> one row's (shape, dtype)) and the `ref_fields` a `ref_table` adds,
    each under `batch_size // process_count` rows (`process_count` defaults to jax's)."""
    check_config(data_cfg)
    rows = local_shard(data_cfg, 0, process_count)[2]  # the same for every process index
    fields = {**fields, **{name: ((), REF_DTYPE) for name in ref_fields}}
    return {
        name: jax.ShapeDtypeStruct((rows, *shape), np.dtype(dtype))
        for name, (shape, dtype) in fields.items()
    }


def row_specs(*shape: int) -> dict[str, FieldSpec]:
    """`pad_row`'s fields, each [*shape] (a stack of rows for several rows per example)."""
    return {name: (shape, dtype) for name, dtype in ROW_DTYPES.items()}


def lm_specs(seq_len: int) -> dict[str, FieldSpec]:
    """`lm_fields`'s fields, each [seq_len]."""
    return {name: ((seq_len,), dtype) for name, dtype in LM_DTYPES.items()}


def split_records(data_cfg, split: str, kind: RecordKind) -> RecordSource:
    """The validated records of `config.data.<split>_files` (split: "train" or "eval")."""
    key = f"{split}_files"
    files = expand_files(data_cfg[key], f"config.data.{key}")
    return RecordSource(files, kind, format=data_cfg.format)


class Examples:
    """A split's usable records, as the batch pipelines read them (grain's random-access
    protocol): `records` less those longer than `max_len` tokens when `overlong` is 'drop'.

    The length pre-pass tokenizes every record once at start-up so the over-long count is
    exact and reported before training, and the kept set is fixed (a checkpoint's data
    position stays meaningful). A record reads as its dict plus `_index`, its position here:
    precomputed reference log-probs are looked up by it, whatever order shuffling brings.
    """

    def __init__(
        self,
        records: RecordSource,
        length_fn: Callable[[dict], int],
        max_len: int,
        overlong: str,
    ):
        if overlong not in ("truncate", "drop"):
            raise DataError(f"config.data.overlong={overlong!r}; expected 'truncate' or 'drop'")
        over = np.asarray([length_fn(records[i]) > max_len for i in range(len(records))], bool)
        keep = np.flatnonzero(~over) if overlong == "drop" else np.arange(len(records))
        if not len(keep):
            raise DataError(
                f"{', '.join(records.paths)}: all {len(records)} records are longer than "
                f"{max_len} tokens and config.data.overlong='drop'; expected some that fit"
            )
        self.records = records
        self._keep = keep
        self._counts = {
            "overlong_" + ("dropped" if overlong == "drop" else "truncated"): int(over.sum()),
            "records_used": len(keep),
        }

    @property
    def paths(self) -> list[str]:
        return self.records.paths

    def stats(self) -> dict[str, int]:
        """The records' counts and the pre-pass's, for the trainer to log once."""
        return {**self.records.stats(), **self._counts}

    def __len__(self) -> int:
        return len(self._keep)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        return {**self.records[int(self._keep[i])], "_index": i}


def pad_row(tokens: np.ndarray, mask: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """One example as a row of `length`: `tokens` (int32) and `mask` (float32) cut at the end
    or right-padded with zeros, and `segment_ids` (int32) 1 on its tokens, 0 on padding."""
    n = min(len(tokens), length)
    row = {name: np.zeros(length, dtype) for name, dtype in ROW_DTYPES.items()}
    row["tokens"][:n], row["mask"][:n], row["segment_ids"][:n] = tokens[:n], mask[:n], 1
    return row


def lm_fields(row: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A packed row of L+1 tokens (with the packer's `tokens_segment_ids`, 0 on padding, and
    `tokens_positions`) as the model's fields: `inputs = row[:-1]`, `targets = row[1:]` (the
    extra token gives every input a next token), `segment_ids`, `positions`, and `loss_mask`
    1 where the target is the next token of the same segment (and, for rows with a `mask`,
    a token that carries loss)."""
    tokens, seg, pos = row["tokens"], row["tokens_segment_ids"], row["tokens_positions"]
    loss = (seg[:-1] == seg[1:]) & (seg[1:] > 0)
    if "mask" in row:
        loss &= row["mask"][1:] > 0
    fields = {
        "inputs": tokens[:-1],
        "targets": tokens[1:],
        "segment_ids": seg[:-1],
        "positions": pos[:-1],
        "loss_mask": loss,
    }
    return {name: fields[name].astype(dtype) for name, dtype in LM_DTYPES.items()}


class _Reference(grain.transforms.Map):
    """Precomputed reference log-probs into an example: column j of `table[index]` becomes
    field `fields[j]`."""

    def __init__(self, table: np.ndarray, fields: tuple[str, ...]):
        self._table, self._fields = table, fields

    def map(self, example: dict) -> dict:
        row = self._table[example["index"]]
        return {**example, **{name: REF_DTYPE(row[j]) for j, name in enumerate(self._fields)}}


class PadAndSlice(grain.transforms.Map):
    """Pads a (possibly short) global batch to `size` rows of zeros, keeps rows [lo, hi)."""

    def __init__(self, size: int, lo: int, hi: int):
        self._size, self._lo, self._hi = size, lo, hi

    def map(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, value in batch.items():
            missing = self._size - value.shape[0]
            if missing:
                value = np.concatenate([value, np.zeros((missing, *value.shape[1:]), value.dtype)])
            out[name] = value[self._lo : self._hi]
        return out


def prefetch(ds: grain.IterDataset, data_cfg) -> grain.IterDataset:
    """Batches built ahead in a background thread (`config.data.prefetch_batches`; 0: off)."""
    n = int(data_cfg.get("prefetch_batches", 0))
    return _ThreadPrefetch(ds, n) if n > 0 else ds


class _ThreadPrefetch(grain.IterDataset):
    """grain's thread prefetch, made quiet at interpreter exit.

    In grain 0.2.18 `ThreadPrefetchDatasetIterator.close` is not idempotent and touches
    module globals, so an iterator still alive at shutdown (a script's global) prints an
    AttributeError traceback from `__del__`. Live iterators are closed by an atexit hook
    (modules still intact), and a second `close` is a no-op.
    """

    def __init__(self, parent: grain.IterDataset, buffer_size: int):
        super().__init__(parent)
        self._buffer_size = buffer_size

    def __iter__(self) -> grain.DatasetIterator:
        it = _ThreadPrefetchIterator(self._parent.__iter__(), self._buffer_size)
        _LIVE_ITERATORS.add(it)
        return it


class _ThreadPrefetchIterator(ThreadPrefetchDatasetIterator):
    def close(self) -> None:
        if not self._closed:
            super().close()


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
    for it in list(_LIVE_ITERATORS):
        it.close()


def to_global_batch(
    local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding | Mapping[str, Any]
) -> dict[str, jax.Array]:
    """Global jax.Arrays from every process's local rows (one sharding, or one per field).

    The global batch dimension is the local one times the number of processes that hold
    shards of `sharding`; which global rows a process's rows become is the sharding's
    business (the loss is a masked mean, so row order does not matter).
    """
    out = {}
    for name, value in local_batch.items():
        s = sharding[name] if isinstance(sharding, Mapping) else sharding
        out[name] = jax.make_array_from_process_local_data(s, np.asarray(value))
    return out
