"""Pipeline building blocks every batch kind shares (pretraining, SFT, pairs, lists, unpaired).

Each batch kind's module keeps only its own encoding; what is common lives here: the config
checks, the per-process shard of a global batch, padding and slicing of a global batch into a
process's rows, row padding to a fixed width, the record index that precomputed reference
log-probs are looked up by, thread prefetch, and assembling the global `jax.Array`s.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
from grain.experimental import ThreadPrefetchDatasetIterator

from align_jax.data.sources import DataError


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
