"""Reading and writing the safetensors format, without the `safetensors` package.

The format is an 8-byte little-endian header length, a JSON header (`name -> {dtype, shape,
data_offsets}` relative to the data section, plus optional `__metadata__`), then raw
little-endian tensor bytes. Reading memory-maps the file, so a tensor's bytes are only
read when it is asked for, and bfloat16 comes out as an `ml_dtypes.bfloat16` numpy array
(numpy itself has no bfloat16; ml_dtypes ships with jax). That lets the importer read one
layer's tensor at a time on each host, never the whole checkpoint.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    """One `.safetensors` file: `keys()`, `shape(name)`, `get(name) -> np.ndarray`."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: not a readable safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self._header = header
        self._data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self._header[name]
        if info["dtype"] not in _DTYPES:
            raise SafetensorsError(
                f"{self.path}: tensor '{name}' has unsupported dtype {info['dtype']}"
            )
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]].newbyteorder("<")
        return self._data[begin:end].view(dtype).reshape(info["shape"])


class Checkpoint:
    """The safetensors tensors of a Hugging Face directory: one file, or shards with an index."""

    def __init__(self, directory: str):
        index = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError) as e:
                raise SafetensorsError(f"{index}: unreadable shard index ({e!r})") from None
            files = {
                name: SafetensorsFile(os.path.join(directory, name))
                for name in set(weight_map.values())
            }
            self._where = {key: files[name] for key, name in weight_map.items()}
        else:
            single = os.path.join(directory, SINGLE_FILE)
            if not os.path.exists(single):
                raise SafetensorsError(
                    f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}; "
                    "expected a Hugging Face checkpoint"
                )
            file = SafetensorsFile(single)
            self._where = {key: file for key in file.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)


def _write_file(path: str, tensors: list[tuple[str, np.ndarray]]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, array in tensors:
        if array.dtype not in _NAMES:
            raise SafetensorsError(f"tensor '{name}': dtype {array.dtype} cannot be written")
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, array in tensors:
            f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
    os.replace(tmp, path)


def write_checkpoint(
    directory: str, tensors: Iterable[tuple[str, np.ndarray]], *, max_shard_bytes: int = 5 << 30
) -> list[str]:
    """Writes `(name, array)` pairs as `model.safetensors`, or as shards plus an index once
    they exceed `max_shard_bytes`. Arrays are consumed one shard at a time. Returns the files."""
    os.makedirs(directory, exist_ok=True)
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    size = total = 0
    written: list[tuple[str, list[str]]] = []

    def flush() -> None:
        if not shards[-1]:
            return
        name = f"part-{len(written) + 1:05d}.safetensors"
        _write_file(os.path.join(directory, name), shards[-1])
        written.append((name, [n for n, _ in shards[-1]]))
        shards[-1] = []

    for name, array in tensors:
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            flush()
            size = 0
        shards[-1].append((name, array))
        size += array.nbytes
        total += array.nbytes
    if not written:  # everything fits one file: the single-file layout
        _write_file(os.path.join(directory, SINGLE_FILE), shards[-1])
        return [SINGLE_FILE]
    flush()
    n = len(written)
    weight_map, files = {}, []
    for i, (tmp_name, names) in enumerate(written, 1):
        final = f"model-{i:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(directory, tmp_name), os.path.join(directory, final))
        weight_map.update({k: final for k in names})
        files.append(final)
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files
