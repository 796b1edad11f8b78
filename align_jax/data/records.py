"""JSONL records of the later stages: validation, chat templates and token/mask encoding.

Record kinds (DESIGN.md's documented fields):
- SFT: `prompt` + `completion` strings, or `messages`: a list of `{"role", "content"}` turns
  (roles system / user / assistant).
- Pairs (reward model, DPO): `prompt`, `chosen`, `rejected` strings; optional `margin`
  (a number, default 0) and soft `label` in [0, 1] (default 1: chosen wins).

Validation happens once, at start-up, over every record (see `sources.DocumentSource`): a
missing or mistyped field is a one-line error naming `file:line`. Records that are
well-formed but unusable are skipped and counted by reason: an empty completion (or an
assistant-free conversation), and for pairs `chosen == rejected` when
`config.data.drop_identical_pairs` (kept and still counted otherwise).

Encoding keeps prompt and completion apart so the loss mask is exact: each piece is
tokenized on its own and the ids concatenated, `mask` = 1 on the tokens that carry loss
(completion / assistant content and the end-of-sequence token that closes it).

Chat templates are plain text markers (the tokenizer needs no special tokens):
- `simple`: `<|system|>\\n…\\n<|user|>\\n…\\n<|assistant|>\\n…\\n` then eos
- `chatml`: `<|im_start|>role\\n…<|im_end|>\\n`, assistant turns closed by `<|im_end|>` + eos.
Loss covers assistant content plus its closing marker and eos, never system or user turns.
"""

from __future__ import annotations

import numpy as np

from align_jax.data.sources import DataError, DocumentSource

ROLES = ("system", "user", "assistant")

# template -> text before and after a turn's content, by role
CHAT_TEMPLATES = {
    "simple": {
        "prefix": {r: f"<|{r}|>\n" for r in ROLES},
        "suffix": {r: "\n" for r in ROLES},
    },
    "chatml": {
        "prefix": {r: f"<|im_start|>{r}\n" for r in ROLES},
        "suffix": {r: "<|im_end|>\n" for r in ROLES},
    },
}


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class SFTSource(DocumentSource):
    """Random-access SFT records (dicts); JSONL only."""

    def __init__(self, paths, *, format: str = "auto"):
        super().__init__(paths, format=format)

    @property
    def _expected(self) -> str:
        return (
            "expected a JSON object with string 'prompt' and 'completion' fields, "
            "or a 'messages' list of {'role', 'content'} turns"
        )

    def _check(self, record: dict, where: str, expected: str) -> str | None:
        if "messages" in record:
            turns = record["messages"]
            if not isinstance(turns, list) or not turns:
                raise DataError(f"{where}: 'messages' is not a non-empty list; {expected}")
            for i, turn in enumerate(turns):
                if (
                    not isinstance(turn, dict)
                    or turn.get("role") not in ROLES
                    or not isinstance(turn.get("content"), str)
                ):
                    raise DataError(
                        f"{where}: messages[{i}] is {json_short(turn)}; expected "
                        f"{{'role': one of {', '.join(ROLES)}, 'content': a string}}"
                    )
            has_reply = any(t["role"] == "assistant" and t["content"].strip() for t in turns)
            return None if has_reply else "no_assistant_reply"
        for key in ("prompt", "completion"):
            if key not in record:
                fields = ", ".join(sorted(record)) or "none"
                raise DataError(f"{where}: no {key!r} field (fields: {fields}); {expected}")
            if not isinstance(record[key], str):
                raise DataError(f"{where}: {key!r} is a {type(record[key]).__name__}; {expected}")
        return None if record["completion"].strip() else "empty_completion"

    def _extract(self, record: dict):
        return record


class PairSource(DocumentSource):
    """Random-access preference pairs (dicts); JSONL only."""

    def __init__(self, paths, *, format: str = "auto", drop_identical: bool = True):
        self.drop_identical = drop_identical
        super().__init__(paths, format=format)

    @property
    def _expected(self) -> str:
        return (
            "expected a JSON object with string 'prompt', 'chosen' and 'rejected' fields "
            "(optional number 'margin', optional 'label' in [0, 1])"
        )

    def _check(self, record: dict, where: str, expected: str) -> str | None:
        for key in ("prompt", "chosen", "rejected"):
            if key not in record:
                fields = ", ".join(sorted(record)) or "none"
                raise DataError(f"{where}: no {key!r} field (fields: {fields}); {expected}")
            if not isinstance(record[key], str):
                raise DataError(f"{where}: {key!r} is a {type(record[key]).__name__}; {expected}")
        if "margin" in record and not _is_number(record["margin"]):
            raise DataError(f"{where}: 'margin' is {json_short(record['margin'])}; {expected}")
        if "label" in record and not (_is_number(record["label"]) and 0 <= record["label"] <= 1):
            raise DataError(f"{where}: 'label' is {json_short(record['label'])}; {expected}")
        if not record["chosen"].strip() or not record["rejected"].strip():
            return "empty_completion"
        if record["chosen"] == record["rejected"]:
            self.identical = getattr(self, "identical", 0) + 1
            return "identical_pair" if self.drop_identical else None
        return None

    def _extract(self, record: dict):
        return record

    def stats(self) -> dict[str, int]:
        stats = super().stats()
        stats["identical_pairs"] = getattr(self, "identical", 0)
        return stats


def json_short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_pieces(tokenizer, pieces, *, add_bos: bool, add_eos: bool):
    """[(text, trained)] -> (tokens int32 [n], mask int32 [n]); eos is trained after a
    trained last piece (it teaches the model to stop)."""
    ids: list[int] = [tokenizer.bos_id] if add_bos else []
    mask: list[int] = [0] * len(ids)
    for text, trained in pieces:
        if not text:
            continue
        piece = tokenizer.encode(text)
        ids += piece
        mask += [int(trained)] * len(piece)
    if add_eos:
        ids.append(tokenizer.eos_id)
        mask.append(mask[-1] if mask else 0)
    return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def sft_pieces(record: dict, template: str) -> list[tuple[str, bool]]:
    if "messages" not in record:
        return [(record["prompt"], False), (record["completion"], True)]
    if template not in CHAT_TEMPLATES:
        raise DataError(
            f"config.data.chat_template={template!r}; expected one of {sorted(CHAT_TEMPLATES)}"
        )
    t = CHAT_TEMPLATES[template]
    pieces = []
    for turn in record["messages"]:
        role = turn["role"]
        trained = role == "assistant"
        pieces += [
            (t["prefix"][role], False),
            (turn["content"], trained),
            (t["suffix"][role], trained),
        ]
    return pieces


def encode_sft(record: dict, tokenizer, data_cfg):
    return encode_pieces(
        tokenizer,
        sft_pieces(record, data_cfg.chat_template),
        add_bos=data_cfg.add_bos,
        add_eos=data_cfg.add_eos,
    )


def encode_completion(prompt: str, completion: str, tokenizer, data_cfg):
    """Prompt + one completion (a side of a pair, or text to score)."""
    return encode_pieces(
        tokenizer,
        [(prompt, False), (completion, True)],
        add_bos=data_cfg.add_bos,
        add_eos=data_cfg.add_eos,
    )


class Filtered:
    """A random-access view of `source` at `indices` (what survived the length pre-pass)."""

    def __init__(self, source, indices: np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[int(i)])]


def length_prepass(source, lengths_fn, max_len: int, overlong: str, key: str):
    """Counts (and with overlong='drop' removes) records longer than `max_len` tokens.

    One tokenizing pass at start-up so the counts are exact and reported before training,
    and the kept set is fixed (a checkpoint's data position stays meaningful).
    """
    if overlong not in ("truncate", "drop"):
        raise DataError(f"{key}={overlong!r}; expected 'truncate' or 'drop'")
    keep, n_over = [], 0
    for i in range(len(source)):
        if lengths_fn(source[i]) > max_len:
            n_over += 1
            if overlong == "drop":
                continue
        keep.append(i)
    if not keep:
        raise DataError(
            f"{', '.join(source.paths)}: all {len(source)} records are longer than "
            f"{max_len} tokens and {key}='drop'; expected some that fit"
        )
    view = Filtered(source, np.asarray(keep))
    view.paths = source.paths
    stats = dict(source.stats())
    stats["overlong_" + ("dropped" if overlong == "drop" else "truncated")] = n_over
    stats["records_used"] = len(keep)
    view.stats = lambda: stats
    return view
