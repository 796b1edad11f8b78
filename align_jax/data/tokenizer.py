"""Tokenizers: one interface over SentencePiece and Hugging Face, and training SentencePiece.

(Past 400 lines: the interface, both backends and the trainer share the special-id layout
and the checkpoint-file rules below, and read best together.)

`Tokenizer.load(path)` is the one entry point; `path` is
- a SentencePiece `.model` file,
- a Hugging Face `tokenizer.json` (needs the `hf` extra: `tokenizers`, `jinja2`), read with
  the `tokenizer_config.json` and `chat_template.jinja` beside it when they exist,
- a Hugging Face checkpoint directory holding `tokenizer.json` or, failing that, a
  SentencePiece `tokenizer.model`, plus those optional files.
Every backend gives the same interface: `encode` (no bos/eos added), `decode`, `vocab_size`,
`bos_id`/`eos_id` (-1: none), `pad_id` (0 when none), `chat_template` (a Jinja string or
None) and `apply_chat_template`. Special-token strings in text (a chat template's
`<|im_end|>`, `<s>`) encode to their ids for Hugging Face tokenizers and for SentencePiece
models read from a checkpoint directory, as transformers does; a bare `.model` file encodes
all text as text. For Hugging Face tokenizers the bos/eos/pad ids come from
tokenizer_config.json (`tokenizer.json` alone does not say which token is which).

Why SentencePiece for our own tokenizers: a `.model` file is one self-contained protobuf (no
merges/vocab pair, no Python-side pre-tokenizer), it is what Llama 1/2 and Gemma ship, and
it encodes in C++.

Training choices (`train_tokenizer`), all aimed at `decode(encode(text)) == text` for
pretraining text:
- `byte_fallback=True`: any character outside the vocabulary becomes its UTF-8 bytes
  (`<0x..>` pieces) instead of `<unk>`, so any text encodes losslessly. The 256 byte
  pieces are part of the vocabulary: vocab_size must exceed 256 + 4 specials + the number
  of distinct characters kept (sentencepiece says so if it does not).
- `normalization_rule_name="identity"`, `remove_extra_whitespaces=False`: no NFKC folding,
  no whitespace collapsing; code and formatted text keep their spaces and newlines.
- `add_dummy_prefix=False`: no space is invented in front of an encoded string, so
  encoding prompt and completion (or chat turns) separately and concatenating the ids
  decodes to exactly the concatenated text; SFT loss masks rely on that split.
- Fixed special ids: pad=0, bos=1, eos=2, unk=3, the Llama layout, so configs and tests
  can rely on them.
- `hard_vocab_limit=False`: a small corpus yields a smaller vocabulary instead of failing;
  the trained size is what `Tokenizer.vocab_size` reports (the model's vocab_size must be
  at least that).
"""

from __future__ import annotations

import abc
import datetime
import functools
import importlib
import json
import os
import re
from collections.abc import Iterator, Sequence

import sentencepiece as spm

from align_jax.data.sources import DataError, DocumentSource

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# Trainer options every tokenizer trained here shares (the module docstring says why).
_FIXED_TRAINING_CHOICES = {
    "pad_id": PAD_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "unk_id": UNK_ID,
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "hard_vocab_limit": False,
    "shuffle_input_sentence": True,
}

_EXPECTED = (
    "expected a sentencepiece .model, a Hugging Face tokenizer.json or a checkpoint "
    "directory holding one"
)


class Tokenizer(abc.ABC):
    """The interface of every backend (see the module docstring); `load` picks the backend."""

    path: str
    chat_template: str | None = None
    # What a chat template sees as `bos_token` / `eos_token`.
    bos_token: str = ""
    eos_token: str = ""

    @staticmethod
    def load(path: str) -> Tokenizer:
        """Loads `path`; a missing or unparsable file is a one-line DataError naming it."""
        if not path:
            raise DataError(f"config.data.tokenizer is empty; {_EXPECTED}")
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file; {_EXPECTED}")
        if os.path.isdir(path):
            for name, backend in (
                ("tokenizer.json", HFTokenizer),
                ("tokenizer.model", SentencePieceTokenizer),
            ):
                if os.path.isfile(os.path.join(path, name)):
                    return backend.from_file(os.path.join(path, name), checkpoint_dir=path)
            raise DataError(
                f"{path}: is a directory without tokenizer.json or tokenizer.model; {_EXPECTED}"
            )
        if path.endswith(".json"):
            return HFTokenizer.from_file(path, checkpoint_dir=os.path.dirname(path) or ".")
        return SentencePieceTokenizer.from_file(path)

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos (the pipeline adds them per config)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def bos_id(self) -> int:
        """-1 if the tokenizer has none."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """-1 if the tokenizer has none."""

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """The pad id, or 0 if the tokenizer defines none.

        Padding never reaches the loss (segment_ids 0, loss_mask 0), so the value only has
        to be a valid embedding row; 0 always is.
        """

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt=False) -> str:
        """`messages` rendered by the checkpoint's chat template, as transformers'
        `apply_chat_template(messages, tokenize=False)` renders them."""
        template = self._jinja_template  # first: no template is the error to report
        jinja2 = _require("jinja2", self.path)
        try:
            return template.render(
                messages=messages,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        except jinja2.TemplateError as e:
            raise DataError(f"{self.path}: chat template failed: {_first_line(e)}") from None

    @functools.cached_property
    def _jinja_template(self):
        # The environment transformers renders chat templates in, so text matches theirs:
        # sandboxed (templates come from the Hub), block whitespace trimmed, plain-JSON tojson
        # (jinja's own escapes HTML), and the globals templates call.
        if self.chat_template is None:
            raise DataError(
                f"{self.path}: no chat template (none in tokenizer_config.json or "
                f"chat_template.jinja beside it); config.data.chat_template='checkpoint' needs one"
            )
        jinja2 = _require("jinja2", self.path)
        sandbox = _require("jinja2.sandbox", self.path)
        ext = _require("jinja2.ext", self.path)

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(
                x,
                ensure_ascii=ensure_ascii,
                indent=indent,
                separators=separators,
                sort_keys=sort_keys,
            )

        env = sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            return env.from_string(self.chat_template)
        except jinja2.TemplateSyntaxError as e:
            raise DataError(
                f"{self.path}: chat template does not parse (line {e.lineno}: {e.message})"
            ) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; from a checkpoint directory, its control pieces (`<s>`, `</s>`)
    written in text are tokens, where sentencepiece alone would encode them as plain text."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: str = "<memory>"):
        self._sp = processor
        self.path = path
        self._special_ids: dict[str, int] = {}
        self._special_re = None

    @classmethod
    def from_file(cls, path: str, checkpoint_dir: str | None = None) -> SentencePieceTokenizer:
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(model_file=path)
        except (RuntimeError, OSError) as e:
            raise DataError(
                f"{path}: cannot load ({_first_line(e)}); expected a sentencepiece .model file"
            ) from None
        tok = cls(sp, path)
        if checkpoint_dir is not None:
            config, tok.chat_template, config_path = _checkpoint_files(checkpoint_dir)
            tok._special_ids = {sp.IdToPiece(i): i for i in range(len(sp)) if sp.IsControl(i)}
            if tok._special_ids:
                tok._special_re = _alternation(tok._special_ids)
            for key, id_ in (("bos_token", sp.bos_id()), ("eos_token", sp.eos_id())):
                token = _special_token(config, key, config_path)
                setattr(tok, key, token or (sp.IdToPiece(id_) if id_ >= 0 else ""))
        return tok

    def encode(self, text: str) -> list[int]:
        if self._special_re is None:
            return self._sp.EncodeAsIds(text)
        ids = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:
                ids.append(self._special_ids[part])
            elif part:
                ids += self._sp.EncodeAsIds(part)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if not self._special_ids:
            return self._sp.DecodeIds(ids)
        out, run = [], []
        for i in ids:
            if self._sp.IsControl(i):  # sentencepiece decodes control pieces to ""
                out += [self._sp.DecodeIds(run), self._sp.IdToPiece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out) + self._sp.DecodeIds(run)

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        pad = self._sp.pad_id()
        return pad if pad >= 0 else 0


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json`, read with the `tokenizers` package."""

    def __init__(self, tokenizer, path: str, ids: dict[str, int]):
        self._tok = tokenizer
        self.path = path
        self._ids = ids

    @classmethod
    def from_file(cls, path: str, checkpoint_dir: str) -> HFTokenizer:
        tokenizers = _require("tokenizers", path)
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the Rust side raises a bare Exception
            raise DataError(
                f"{path}: cannot load ({_first_line(e)}); expected a Hugging Face tokenizer.json"
            ) from None
        config, template, config_path = _checkpoint_files(checkpoint_dir)
        keys = ("bos_token", "eos_token", "pad_token")
        tokens = {key: _special_token(config, key, config_path) for key in keys}
        ids = {key: -1 if t is None else tok.token_to_id(t) for key, t in tokens.items()}
        for key, id_ in ids.items():
            if id_ is None:
                raise DataError(f"{config_path}: {key} {tokens[key]!r} is not a token of {path}")
        out = cls(tok, path, ids)
        out.chat_template = template
        out.bos_token, out.eos_token = tokens["bos_token"] or "", tokens["eos_token"] or ""
        return out

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        # Special tokens stay in the text (transformers' default), so a rendered chat decodes
        # back to itself.
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._ids["bos_token"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos_token"]

    @property
    def pad_id(self) -> int:
        return max(self._ids["pad_token"], 0)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def _require(module: str, path: str):
    """Imports an optional `hf` extra's module; missing, it is a one-line DataError."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise DataError(
            f"{path}: needs the {package!r} package; install it with pip install 'align_jax[hf]'"
        ) from None


def _alternation(strings) -> re.Pattern:
    # Longest first, so a token that is a prefix of another never splits it.
    return re.compile("(" + "|".join(map(re.escape, sorted(strings, key=len, reverse=True))) + ")")


def _checkpoint_files(directory: str) -> tuple[dict, str | None, str]:
    """(tokenizer_config.json contents or {}, chat template or None, config path)."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(
                f"{config_path}: not valid JSON ({_first_line(e)}); expected a Hugging Face "
                "tokenizer_config.json"
            ) from None
        if not isinstance(config, dict):
            raise DataError(f"{config_path}: expected a JSON object")
    template = config.get("chat_template")
    if isinstance(template, list):  # the older form: named templates, "default" the chat one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_path):  # where transformers saves it now; it wins, as there
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    if template is not None and not isinstance(template, str):
        raise DataError(f"{config_path}: 'chat_template' is not a string")
    return config, template, config_path


def _special_token(config: dict, key: str, config_path: str) -> str | None:
    """A tokenizer_config.json special token: a string, {"content": string} or null."""
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise DataError(
            f"{config_path}: {key!r} is {value!r}; expected a string or {{'content': string}}"
        )
    return value


def _iter_training_text(files: Sequence[str], fmt: str, text_field: str) -> Iterator[str]:
    """The documents' non-blank lines: sentencepiece samples sentences, one per line. The
    files are read (and validated) as the pretraining pipeline reads them."""
    documents = DocumentSource(files, format=fmt, text_field=text_field)
    for i in range(len(documents)):
        for line in documents[i].splitlines():
            if line.strip():
                yield line


def train_tokenizer(
    input_files: Sequence[str],
    model_prefix: str,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    format: str = "auto",
    text_field: str = "text",
    character_coverage: float = 0.9995,
    input_sentence_size: int = 2_000_000,
    num_threads: int | None = None,
    quiet: bool = True,
) -> Tokenizer:
    """Trains a SentencePiece model on text/JSONL files; writes `<model_prefix>.model`/`.vocab`.

    See the module docstring for the fixed choices. `input_sentence_size` caps how many
    lines are sampled (sentencepiece shuffles them), which bounds memory on big corpora.
    """
    if not input_files:
        raise DataError("train_tokenizer: no input files; expected at least one")
    out_dir = os.path.dirname(model_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=_iter_training_text(input_files, format, text_field),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2 if quiet else 0,
            **_FIXED_TRAINING_CHOICES,
        )
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        if "smaller than required_chars" in reason:
            reason += " (byte_fallback takes 256 of the ids)"
        raise DataError(f"sentencepiece training for {model_prefix!r} failed: {reason}") from None
    return Tokenizer.load(model_prefix + ".model")
