"""JSONL records of the later stages: their kinds, chat templates and token/mask encoding.

Record kinds (the fields of each stage's data: docs/architecture.md), each read by a
`sources.RecordSource`:
- SFT (`SFTRecords`): `prompt` + `completion` strings, or `messages`: a list of
  `{"role", "content"}` turns (roles system / user / assistant).
- Pairs (`PairRecords`, reward model, DPO): `prompt`, `chosen`, `rejected` strings; optional
  `margin` (a number, default 0) and soft `label` in [0, 1] (default 1: chosen wins).
- Lists (`ListRecords`, listwise objectives): `prompt`, `responses` (a list of strings) and
  `ranks` (ints >= 1, 1 = best; ties allowed) or `scores` (numbers, higher = better), one
  per response.
- Unpaired (`UnpairedRecords`, KTO): `prompt`, `completion` and `label` (true / false or
  1 / 0: desirable).

Validation happens once, at start-up, over every record: a missing or mistyped field is a
one-line error naming `file:line`, and a plain-text file is one naming the file. Records
that are well-formed but unusable are skipped and counted by reason: an empty completion
(or an assistant-free conversation), for pairs `chosen == rejected` when
`config.data.drop_identical_pairs` (kept and still counted otherwise), and for lists fewer
than two non-empty responses.

Encoding keeps prompt and completion apart so the loss mask is exact: each piece is
tokenized on its own and the ids concatenated, `mask` = 1 on the tokens that carry loss
(completion / assistant content and the end-of-sequence token that closes it).

Chat templates (`config.data.chat_template`):
- `simple`: `<|system|>\\n…\\n<|user|>\\n…\\n<|assistant|>\\n…\\n` then eos
- `chatml`: `<|im_start|>role\\n…<|im_end|>\\n`, assistant turns closed by `<|im_end|>` + eos.
  These two are plain text markers (the tokenizer needs no special tokens).
- `checkpoint`: the tokenizer's own Jinja template (`Tokenizer.apply_chat_template`). Each
  assistant turn's text is where `messages[:i+1]` renders past `messages[:i]` with the
  generation prompt, so it is the content plus whatever the template closes a turn with;
  a template that does not render conversations prefix by prefix is an error.
Loss covers assistant content plus its closing marker and eos, never system or user turns.
A prompt for online RL (`prompt_pieces`, align_jax/data/prompts.py) is a conversation
rendered up to the generation prompt, cut into the same pieces as SFT.
"""

from __future__ import annotations

import math

import numpy as np

from align_jax.data.sources import DataError, RecordKind, require_fields

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
# The tokenizer's own Jinja chat template (a Hugging Face checkpoint's).
CHECKPOINT_TEMPLATE = "checkpoint"


class SFTRecords(RecordKind):
    """SFT records (dicts, as in the file)."""

    name = "SFT"
    fields = (
        "string 'prompt' and 'completion' fields, or a 'messages' list of {'role', 'content'} turns"
    )
    skips = ("empty_completion", "no_assistant_reply")

    def check(self, record: dict, where: str, expected: str) -> str | None:
        if "messages" not in record:
            require_fields(record, where, expected, {"prompt": str, "completion": str})
            return None if record["completion"].strip() else "empty_completion"
        turns = check_messages(record, where, expected)
        has_reply = any(t["role"] == "assistant" and t["content"].strip() for t in turns)
        return None if has_reply else "no_assistant_reply"


class PairRecords(RecordKind):
    """Preference pairs (dicts, as in the file)."""

    name = "preference-pair"
    fields = (
        "string 'prompt', 'chosen' and 'rejected' fields (optional number 'margin', optional "
        "'label' in [0, 1])"
    )
    skips = ("empty_completion", "identical_pair")

    def __init__(self, *, drop_identical: bool = True):
        self.drop_identical = drop_identical
        self.identical = 0

    def check(self, record: dict, where: str, expected: str) -> str | None:
        require_fields(record, where, expected, {"prompt": str, "chosen": str, "rejected": str})
        _require_value(record, "margin", _is_number, where, expected)
        _require_value(record, "label", _is_probability, where, expected)
        if not record["chosen"].strip() or not record["rejected"].strip():
            return "empty_completion"
        if record["chosen"] == record["rejected"]:
            self.identical += 1
            return "identical_pair" if self.drop_identical else None
        return None

    def counts(self) -> dict[str, int]:
        return {"identical_pairs": self.identical}


class ListRecords(RecordKind):
    """Ranked or scored lists.

    A record reads as `{"prompt", "responses", "scores" (or None), "ranks"}` with empty
    responses removed, the rest in ranked order (best first; ties keep file order) and at
    most `list_size` of them (the best ones). `ranks` are 1 + the number of strictly better
    kept responses (from the given ranks, or from scores: equal scores share a rank).
    Skipped and counted: lists with fewer than two non-empty responses. Counted: lists cut to
    `list_size`, lists shorter than it (padded by the pipeline), empty responses removed,
    records with scores.
    """

    name = "listwise"
    fields = (
        "a string 'prompt', a 'responses' list of strings and 'ranks' (integers >= 1, 1 = best) "
        "or 'scores' (numbers), one per response"
    )
    skips = ("too_few_responses",)

    def __init__(self, list_size: int = 4):
        if not (isinstance(list_size, int) and list_size >= 2):
            raise DataError(f"config.data.list_size={list_size!r}; expected an integer >= 2")
        self.list_size = list_size
        self.tally = dict.fromkeys(
            ("lists_cut", "lists_padded", "empty_responses", "records_with_scores"), 0
        )

    def check(self, record: dict, where: str, expected: str) -> str | None:
        require_fields(record, where, expected, {"prompt": str, "responses": list})
        responses = record["responses"]
        _require_items(record, "responses", lambda r: isinstance(r, str), where, expected)
        if "ranks" not in record and "scores" not in record:
            fields = ", ".join(sorted(record))
            raise DataError(f"{where}: neither 'ranks' nor 'scores' (fields: {fields}); {expected}")
        for key, ok in (("ranks", _is_rank), ("scores", _is_finite_number)):
            if key not in record:
                continue
            values = record[key]
            if not isinstance(values, list) or len(values) != len(responses):
                raise DataError(
                    f"{where}: {key!r} is {json_short(values)} for {len(responses)} responses; "
                    f"{expected}"
                )
            _require_items(record, key, ok, where, expected)
        n = sum(1 for r in responses if r.strip())
        if n < 2:
            return "too_few_responses"
        self.tally["empty_responses"] += len(responses) - n
        self.tally["lists_cut"] += n > self.list_size
        self.tally["lists_padded"] += n < self.list_size
        self.tally["records_with_scores"] += "scores" in record
        return None

    def extract(self, record: dict) -> dict:
        keep = [i for i, r in enumerate(record["responses"]) if r.strip()]
        scores = record.get("scores")
        if "ranks" in record:
            keys = [record["ranks"][i] for i in keep]
        else:
            keys = [-scores[i] for i in keep]
        order = sorted(range(len(keep)), key=lambda j: keys[j])[: self.list_size]
        kept_keys = [keys[j] for j in order]
        return {
            "prompt": record["prompt"],
            "responses": [record["responses"][keep[j]] for j in order],
            "scores": None if scores is None else [float(scores[keep[j]]) for j in order],
            "ranks": [1 + sum(k < key for k in kept_keys) for key in kept_keys],
        }

    def counts(self) -> dict[str, int]:
        return dict(self.tally)


class UnpairedRecords(RecordKind):
    """Unpaired examples (dicts, `label` read as a bool)."""

    name = "unpaired"
    fields = (
        "string 'prompt' and 'completion' fields and a 'label' (true / false or 1 / 0: the "
        "completion is desirable)"
    )
    skips = ("empty_completion",)

    def __init__(self):
        self.tally = {"desirable": 0, "undesirable": 0}

    def check(self, record: dict, where: str, expected: str) -> str | None:
        require_fields(record, where, expected, {"prompt": str, "completion": str, "label": object})
        _require_value(record, "label", _is_label, where, expected)
        if not record["completion"].strip():
            return "empty_completion"
        self.tally["desirable" if record["label"] else "undesirable"] += 1
        return None

    def extract(self, record: dict) -> dict:
        return {**record, "label": bool(record["label"])}

    def counts(self) -> dict[str, int]:
        return dict(self.tally)


def check_messages(record: dict, where: str, expected: str) -> list[dict]:
    """`record["messages"]`, or the one-line DataError for what makes it no conversation."""
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
    return turns


def _require_value(record: dict, key: str, ok, where: str, expected: str) -> None:
    """The one-line DataError when `record` holds `key` and its value fails `ok`."""
    if key in record and not ok(record[key]):
        raise DataError(f"{where}: {key!r} is {json_short(record[key])}; {expected}")


def _require_items(record: dict, key: str, ok, where: str, expected: str) -> None:
    """The one-line DataError for the first item of the list `record[key]` that fails `ok`."""
    for i, value in enumerate(record[key]):
        if not ok(value):
            raise DataError(f"{where}: {key}[{i}] is {json_short(value)}; {expected}")


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_probability(x) -> bool:
    return _is_number(x) and 0 <= x <= 1


def _is_label(x) -> bool:
    return isinstance(x, bool) or (_is_number(x) and x in (0, 1))


def _is_rank(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _is_finite_number(x) -> bool:
    return _is_number(x) and math.isfinite(x)


def json_short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def special_ids(tokenizer, *, add_bos: bool, add_eos: bool) -> tuple[list[int], list[int]]:
    """The ids an example starts and ends with: ([bos] or [], [eos] or [])."""
    for flag, name, token_id in (
        (add_bos, "add_bos", tokenizer.bos_id),
        (add_eos, "add_eos", tokenizer.eos_id),
    ):
        if flag and token_id < 0:  # -1 would silently index the last embedding row
            raise DataError(
                f"config.data.{name}=True but {tokenizer.path} has no {name[4:]} token; "
                f"expected a tokenizer with one, or set config.data.{name}=False"
            )
    return [tokenizer.bos_id] if add_bos else [], [tokenizer.eos_id] if add_eos else []


def encode_pieces(tokenizer, pieces, *, add_bos: bool, add_eos: bool):
    """[(text, trained)] -> (tokens int32 [n], mask int32 [n]); eos is trained after a
    trained last piece (it teaches the model to stop)."""
    bos, eos = special_ids(tokenizer, add_bos=add_bos, add_eos=add_eos)
    ids, mask = list(bos), [0] * len(bos)
    for text, trained in pieces:
        if not text:
            continue
        piece = tokenizer.encode(text)
        ids += piece
        mask += [int(trained)] * len(piece)
    if eos:
        ids += eos
        mask.append(mask[-1] if mask else 0)
    return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def sft_pieces(record: dict, template: str, tokenizer) -> list[tuple[str, bool]]:
    if "messages" not in record:
        return [(record["prompt"], False), (record["completion"], True)]
    if template == CHECKPOINT_TEMPLATE:
        return checkpoint_pieces(record["messages"], tokenizer)
    if template not in CHAT_TEMPLATES:
        raise DataError(
            f"config.data.chat_template={template!r}; expected one of "
            f"{sorted([*CHAT_TEMPLATES, CHECKPOINT_TEMPLATE])}"
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


def checkpoint_pieces(messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
    """[(text, trained)] of a conversation rendered by the tokenizer's chat template; the
    trained pieces are the assistant turns (see the module docstring)."""
    # Renders that end where a trained piece starts (False) or ends (True).
    cuts = []
    for i, turn in enumerate(messages):
        if turn["role"] == "assistant":
            cuts += [
                (tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True), False),
                (tokenizer.apply_chat_template(messages[: i + 1]), True),
            ]
    cuts.append((tokenizer.apply_chat_template(messages), False))
    pieces, done = [], ""
    for text, trained in cuts:
        if not text.startswith(done):
            raise DataError(
                f"{tokenizer.path}: its chat template does not render a conversation prefix by "
                "prefix (earlier turns change when later ones follow), so assistant turns cannot "
                "be located; config.data.chat_template='checkpoint' needs one that does"
            )
        pieces.append((text[len(done) :], trained))
        done = text
    return pieces


def prompt_pieces(messages: list[dict], template: str, tokenizer) -> list[tuple[str, bool]]:
    """[(text, False)] of a conversation followed by the generation prompt (the text before
    the next assistant turn's content), split as `sft_pieces` splits the same turns when a
    reply follows them, so a prompt tokenizes exactly as SFT tokenized it."""
    if template == CHECKPOINT_TEMPLATE:
        pieces = checkpoint_pieces(messages, tokenizer)[:-1]  # up to the last reply's end
        done = "".join(text for text, _ in pieces)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if not text.startswith(done):
            raise DataError(
                f"{tokenizer.path}: its chat template renders a conversation differently with "
                "the generation prompt, so a prompt cannot be cut where SFT cut it; "
                "config.data.chat_template='checkpoint' needs one that renders prefix by prefix"
            )
        pieces.append((text[len(done) :], False))
    else:
        pieces = sft_pieces({"messages": messages}, template, tokenizer)
        pieces.append((CHAT_TEMPLATES[template]["prefix"]["assistant"], False))
    return [(text, False) for text, _ in pieces]


def encode_sft(record: dict, tokenizer, data_cfg):
    return encode_pieces(
        tokenizer,
        sft_pieces(record, data_cfg.chat_template, tokenizer),
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


def encode_list(record: dict, tokenizer, data_cfg):
    """Prompt + each response of a list record, in its order: [(tokens, mask)] * K."""
    return [
        encode_completion(record["prompt"], response, tokenizer, data_cfg)
        for response in record["responses"]
    ]
