"""Documents on disk, as a random-access source grain can shuffle and shard.

Why an offset index instead of loading the corpus: grain's `MapDataset` wants `len` and
`__getitem__` so that a global shuffle, per-process sharding and checkpointing are all just
index arithmetic (a checkpoint is a handful of integers, not a file position per reader).
One pass at construction records each document's (file, byte offset, byte length) in numpy
arrays; a read is one `os.pread`, which is thread-safe, so grain's read threads can share
the open files.

That same pass validates every record. A bad line deep in a corpus otherwise surfaces hours
into a run, in a worker thread, without the file name; here it fails at start-up as one line
naming `file:line`, what is wrong and what was expected.

Formats:
- JSONL (`.jsonl`, `.json`): one JSON object per line; the document is its `text_field`
  (default "text"). Whitespace-only lines are tolerated and ignored (editors leave them).
- Plain text (`.txt`, `.text`, `.md`): documents are separated by one or more blank lines,
  so a document may span lines (paragraph- or article-per-block corpora keep their internal
  newlines). One-document-per-line corpora should be JSONL; a line-per-document text
  format would silently turn every wrapped paragraph into many tiny documents.

Documents whose text is empty or whitespace are skipped and counted in `num_skipped_empty`
(data scrapes have them; they are not worth stopping a run for). An empty file is an error:
it is almost always a failed download or a wrong glob.
"""

from __future__ import annotations

import glob
import json
import os
import threading
from collections.abc import Sequence

import numpy as np


class DataError(ValueError):
    """A data file, config key or tokenizer is unusable; the message says which and why."""


_JSONL_EXTS = (".jsonl", ".json")
_TEXT_EXTS = (".txt", ".text", ".md")
_FORMATS = ("auto", "jsonl", "text")
_GLOB_CHARS = frozenset("*?[")


def expand_files(spec: str | Sequence[str], key: str) -> list[str]:
    """Expands a comma-separated string (or list) of paths and globs into sorted file paths.

    Each glob's matches are sorted (file order fixes document order, hence determinism);
    the order between patterns is kept and duplicates are dropped. `key` is the config key
    the spec came from, e.g. "config.data.train_files", so errors say what to change.
    """
    patterns = spec.split(",") if isinstance(spec, str) else list(spec)
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise DataError(f"{key} is empty; expected a comma-separated list of files or globs")
    files: list[str] = []
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if _GLOB_CHARS & set(path):
            matches = sorted(glob.glob(path, recursive=True))
        else:
            matches = [path] if os.path.exists(path) else []
        if not matches:
            raise DataError(f"{key}: {pattern!r} matches no file; expected existing files")
        for match in matches:
            if os.path.isdir(match):
                raise DataError(f"{key}: {match!r} is a directory; expected files (use a glob)")
            if match not in files:
                files.append(match)
    return files


def resolve_format(path: str, fmt: str) -> str:
    """'jsonl' or 'text' for `path`, from `fmt` or (fmt='auto') the file extension."""
    if fmt not in _FORMATS:
        raise DataError(f"config.data.format={fmt!r}; expected one of {', '.join(_FORMATS)}")
    if fmt != "auto":
        return fmt
    lower = path.lower()
    if lower.endswith(_JSONL_EXTS):
        return "jsonl"
    if lower.endswith(_TEXT_EXTS):
        return "text"
    raise DataError(
        f"{path}: cannot tell the format from the extension; expected one of "
        f"{', '.join(_JSONL_EXTS + _TEXT_EXTS)}, or set config.data.format to jsonl or text"
    )


class DocumentSource:
    """Random-access documents (`str`) from JSONL and plain-text files; see module docstring.

    Implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`).
    """

    def __init__(self, paths: Sequence[str], *, format: str = "auto", text_field: str = "text"):
        if not paths:
            raise DataError("DocumentSource: no files given; expected at least one path")
        self.paths = list(paths)
        self.text_field = text_field
        self._formats = [resolve_format(p, format) for p in self.paths]
        self.skipped: dict[str, int] = {}  # skip reason -> count
        file_ids, offsets, lengths = [], [], []
        for file_id, (path, fmt) in enumerate(zip(self.paths, self._formats, strict=True)):
            index = self._index_jsonl(path) if fmt == "jsonl" else self._index_text(path)
            file_ids += [file_id] * len(index)
            offsets += [start for start, _ in index]
            lengths += [length for _, length in index]
        if not offsets:
            raise DataError(
                f"{', '.join(self.paths)}: no usable records "
                f"(skipped: {self.skipped or 'none'}); expected at least one"
            )
        self._file_ids = np.asarray(file_ids, np.int32)
        self._offsets = np.asarray(offsets, np.int64)
        self._lengths = np.asarray(lengths, np.int64)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    # --- indexing (one validating pass) ---------------------------------------------------

    @staticmethod
    def _open(path: str):
        try:
            f = open(path, "rb")
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror}); expected a readable file") from e
        if os.fstat(f.fileno()).st_size == 0:
            f.close()
            raise DataError(f"{path}: file is empty; expected at least one document")
        return f

    def _index_jsonl(self, path: str) -> list[tuple[int, int]]:
        expected = self._expected
        index = []
        offset = 0
        with self._open(path) as f:
            for line_no, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}); {expected}"
                    ) from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg}); {expected}") from None
                if not isinstance(record, dict):
                    raise DataError(f"{where}: got a JSON {type(record).__name__}; {expected}")
                skip = self._check(record, where, expected)
                if skip:
                    self.skipped[skip] = self.skipped.get(skip, 0) + 1
                    continue
                index.append((start, len(raw)))
        return index

    @property
    def _expected(self) -> str:
        return f"expected a JSON object with a string {self.text_field!r} field"

    def _check(self, record: dict, where: str, expected: str) -> str | None:
        """Raises DataError for a malformed record; returns a skip reason, or None to keep it.

        Subclasses (records of other stages) override this and `_extract`.
        """
        if self.text_field not in record:
            fields = ", ".join(sorted(record)) or "none"
            raise DataError(f"{where}: no {self.text_field!r} field (fields: {fields}); {expected}")
        text = record[self.text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: {self.text_field!r} is a {type(text).__name__}; {expected}")
        return None if text.strip() else "empty"

    def _extract(self, record: dict):
        return record[self.text_field]

    @property
    def num_skipped_empty(self) -> int:
        return self.skipped.get("empty", 0)

    def _index_text(self, path: str) -> list[tuple[int, int]]:
        """Documents are maximal runs of non-blank lines; (start, length) excludes the final
        newline. A whitespace-only run cannot occur (blank lines separate), so text files
        contribute no skipped-empty documents."""
        index = []
        offset = 0
        doc_start = doc_end = None
        with self._open(path) as f:
            for line_no, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                        f"column {e.start + 1}); expected UTF-8 text"
                    ) from None
                if raw.strip():
                    if doc_start is None:
                        doc_start = start
                    doc_end = start + len(raw.rstrip(b"\r\n"))
                elif doc_start is not None:
                    index.append((doc_start, doc_end - doc_start))
                    doc_start = None
        if doc_start is not None:
            index.append((doc_start, doc_end - doc_start))
        return index

    # --- random access ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> str:
        index = int(index)
        file_id = int(self._file_ids[index])
        fd = self._fds.get(file_id)
        if fd is None:
            with self._lock:  # grain's read threads may race to open the same file
                fd = self._fds.get(file_id)
                if fd is None:
                    fd = self._fds[file_id] = os.open(self.paths[file_id], os.O_RDONLY)
        raw = os.pread(fd, int(self._lengths[index]), int(self._offsets[index]))
        if self._formats[file_id] == "jsonl":
            return self._extract(json.loads(raw))
        return raw.decode("utf-8")

    def stats(self) -> dict[str, int]:
        """Counts for the trainer to log once at start-up."""
        stats = {"files": len(self.paths), "documents": len(self)}
        stats.update({f"skipped_{k}": v for k, v in sorted(self.skipped.items())})
        stats.setdefault("skipped_empty", 0)
        return stats

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # File descriptors and locks do not survive pickling (grain worker processes).
    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_fds"], state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fds = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"DocumentSource({len(self.paths)} files, {len(self)} documents, "
            f"{self.num_skipped_empty} empty skipped)"
        )
