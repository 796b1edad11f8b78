"""Records on disk, as a random-access source grain can shuffle and shard.

Why an offset index instead of loading the corpus: grain's `MapDataset` wants `len` and
`__getitem__` so that a global shuffle, per-process sharding and checkpointing are all just
index arithmetic (a checkpoint is a handful of integers, not a file position per reader).
One pass at construction records each record's (file, byte offset, byte length) in numpy
arrays; a read is one `os.pread`, which is thread-safe, so grain's read threads can share
the open files.

That same pass validates every record. A bad line deep in a corpus otherwise surfaces hours
into a run, in a worker thread, without the file name; here it fails at start-up as one line
naming `file:line`, what is wrong and what was expected.

A source holds records of one kind (a `RecordKind`): pretraining documents (`Documents`,
read by `DocumentSource`) or a later stage's records (align_jax/data/records.py). The kind
says which fields a record needs and which records are skipped (`check`), what a read
returns (`extract`) and what else it counts.

Formats:
- JSONL (`.jsonl`, `.json`): one JSON object per line. Whitespace-only lines are tolerated
  and ignored (editors leave them).
- Plain text (`.txt`, `.text`, `.md`), for documents only: documents are separated by one or
  more blank lines, so a document may span lines (paragraph- or article-per-block corpora
  keep their internal newlines). One-document-per-line corpora should be JSONL; a
  line-per-document text format would silently turn every wrapped paragraph into many tiny
  documents. A plain-text file given for any other kind is an error naming it.

Documents whose text is empty or whitespace are skipped and counted in `num_skipped_empty`
(data scrapes have them; they are not worth stopping a run for). An empty file is an error:
it is almost always a failed download or a wrong glob.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import threading
from collections.abc import Mapping, Sequence

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


def require_fields(record: dict, where: str, expected: str, fields: Mapping[str, type]) -> None:
    """The one-line DataError for the first of `fields` (name -> type) that `record` lacks
    or holds with another type."""
    for key, kind in fields.items():
        if key not in record:
            names = ", ".join(sorted(record)) or "none"
            raise DataError(f"{where}: no {key!r} field (fields: {names}); {expected}")
        if not isinstance(record[key], kind):
            raise DataError(f"{where}: {key!r} is a {type(record[key]).__name__}; {expected}")


class RecordKind:
    """What the records of a source are. A kind counts what its `check` sees, so each source
    gets a kind of its own.

    - `name`, `fields`: for errors ("expected a JSON object with <fields>").
    - `skips`: the skip reasons `check` returns; a source's stats report every one.
    - `plain_text`: whether a plain-text file's blocks are records of this kind.
    """

    name: str
    fields: str
    skips: tuple[str, ...] = ()
    plain_text = False

    def check(self, record: dict, where: str, expected: str) -> str | None:
        """Raises DataError for a malformed record; returns a skip reason, or None to keep it."""
        raise NotImplementedError

    def extract(self, record: dict):
        """What reading a kept record returns."""
        return record

    def counts(self) -> dict[str, int]:
        """The kind's own counts over the kept records, for the start-up log."""
        return {}


class Documents(RecordKind):
    """Pretraining documents (`str`): a JSONL object's `text_field`, or a plain-text block."""

    name = "pretraining"
    skips = ("empty",)
    plain_text = True

    def __init__(self, text_field: str = "text"):
        self.text_field = text_field
        self.fields = f"a string {text_field!r} field"

    def check(self, record: dict, where: str, expected: str) -> str | None:
        require_fields(record, where, expected, {self.text_field: str})
        return None if record[self.text_field].strip() else "empty"

    def extract(self, record: dict) -> str:
        return record[self.text_field]


class RecordSource:
    """Random-access records of one `kind` from files; see the module docstring.

    Construction is the one validating pass over every file. Implements grain's
    RandomAccessDataSource protocol (`__len__`, `__getitem__`).
    """

    def __init__(self, paths: Sequence[str], kind: RecordKind, *, format: str = "auto"):
        if not paths:
            raise DataError(f"{type(self).__name__}: no files given; expected at least one path")
        self.paths = list(paths)
        self.kind = kind
        self._formats = [_file_format(p, format, kind) for p in self.paths]
        self.skipped: dict[str, int] = {}  # skip reason -> count
        self._file_ids, self._offsets, self._lengths = _index_files(
            self.paths, self._formats, kind, self.skipped
        )
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int):
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
            return self.kind.extract(json.loads(raw))
        return raw.decode("utf-8")

    def stats(self) -> dict[str, int]:
        """Counts for the trainer to log once at start-up."""
        stats = {"files": len(self.paths), "documents": len(self)}
        reasons = dict.fromkeys([*self.kind.skips, *sorted(self.skipped)])
        stats.update({f"skipped_{r}": self.skipped.get(r, 0) for r in reasons})
        stats.update(self.kind.counts())
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
            f"{type(self).__name__}({len(self.paths)} files, {len(self)} records, "
            f"skipped: {self.skipped or 'none'})"
        )


class DocumentSource(RecordSource):
    """Random-access pretraining documents (`str`) from JSONL and plain-text files."""

    def __init__(self, paths: Sequence[str], *, format: str = "auto", text_field: str = "text"):
        super().__init__(paths, Documents(text_field), format=format)

    @property
    def num_skipped_empty(self) -> int:
        return self.skipped.get("empty", 0)


# --- the validating pass ------------------------------------------------------------------


def _file_format(path: str, fmt: str, kind: RecordKind) -> str:
    resolved = resolve_format(path, fmt)
    if resolved == "text" and not kind.plain_text:
        how = "config.data.format='text'" if fmt == "text" else "by its extension"
        raise DataError(
            f"{path}: plain text ({how}); {kind.name} data is JSONL: expected one JSON object "
            f"per line with {kind.fields}"
        )
    return resolved


def _index_files(paths, formats, kind: RecordKind, skipped: dict[str, int]):
    """(file ids, byte offsets, byte lengths) of every kept record; counts skips in `skipped`."""
    file_ids, offsets, lengths = [], [], []
    for file_id, (path, fmt) in enumerate(zip(paths, formats, strict=True)):
        spans = _jsonl_spans(path, kind, skipped) if fmt == "jsonl" else _text_spans(path)
        file_ids += [file_id] * len(spans)
        offsets += [start for start, _ in spans]
        lengths += [length for _, length in spans]
    if not offsets:
        raise DataError(
            f"{', '.join(paths)}: no usable records "
            f"(skipped: {skipped or 'none'}); expected at least one"
        )
    return (
        np.asarray(file_ids, np.int32),
        np.asarray(offsets, np.int64),
        np.asarray(lengths, np.int64),
    )


def _open(path: str):
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); expected a readable file") from e
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        raise DataError(f"{path}: file is empty; expected at least one document")
    return f


def _utf8_error(where: str, raw: bytes, e: UnicodeDecodeError, expected: str) -> DataError:
    return DataError(
        f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); {expected}"
    )


def _jsonl_spans(path: str, kind: RecordKind, skipped: dict[str, int]) -> list[tuple[int, int]]:
    expected = f"expected a JSON object with {kind.fields}"
    spans = []
    offset = 0
    with _open(path) as f:
        for line_no, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise _utf8_error(where, raw, e, expected) from None
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg}); {expected}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: got a JSON {type(record).__name__}; {expected}")
            skip = kind.check(record, where, expected)
            if skip:
                skipped[skip] = skipped.get(skip, 0) + 1
                continue
            spans.append((start, len(raw)))
    return spans


def _text_spans(path: str) -> list[tuple[int, int]]:
    """Documents are maximal runs of non-blank lines; (start, length) excludes the final
    newline. A whitespace-only run cannot occur (blank lines separate), so text files
    contribute no skipped-empty documents."""
    spans = []
    offset = 0
    doc_start = doc_end = None
    with _open(path) as f:
        for line_no, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(f"{path}:{line_no}", raw, e, "expected UTF-8 text") from None
            if raw.strip():
                if doc_start is None:
                    doc_start = start
                doc_end = start + len(raw.rstrip(b"\r\n"))
            elif doc_start is not None:
                spans.append((doc_start, doc_end - doc_start))
                doc_start = None
    if doc_start is not None:
        spans.append((doc_start, doc_end - doc_start))
    return spans


def read_records(path: str, fields: tuple[str, ...]) -> list[dict]:
    """JSON objects with the string `fields`, one per line of `path` (`-`: standard input),
    for the command lines that take a small JSONL input (generate, score)."""
    wanted = (
        f"a string {fields[0]!r}"
        if len(fields) == 1
        else "string " + " and ".join(repr(k) for k in fields) + " fields"
    )
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    records = []
    with f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in fields
            ):
                raise DataError(f"{path}:{line_no}: expected a JSON object with {wanted}")
            records.append(record)
    return records
