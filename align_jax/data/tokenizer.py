"""SentencePiece tokenizer: loading one, and training one on the project's own data formats.

Why SentencePiece: a `.model` file is one self-contained protobuf (no merges/vocab pair, no
Python-side pre-tokenizer), it is what Llama 1/2 and Gemma ship, and it encodes in C++.

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

import json
import os
from collections.abc import Iterator, Sequence

import sentencepiece as spm

from align_jax.data.sources import DataError, resolve_format

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class Tokenizer:
    """A loaded SentencePiece model with the ids the data pipeline needs."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: str = "<memory>"):
        self._sp = processor
        self.path = path

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Loads `path`; a missing or unparsable file is a DataError naming it."""
        if not path:
            raise DataError(
                "config.data.tokenizer is empty; expected the path of a sentencepiece .model"
            )
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file; expected a sentencepiece .model file")
        if os.path.isdir(path):
            raise DataError(f"{path}: is a directory; expected a sentencepiece .model file")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(model_file=path)
        except (RuntimeError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(
                f"{path}: cannot load ({reason}); expected a sentencepiece .model file"
            ) from None
        return cls(sp, path)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos (the pipeline adds them per config)."""
        return self._sp.EncodeAsIds(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def bos_id(self) -> int:
        """-1 if the model has none."""
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """-1 if the model has none."""
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        """The model's pad id, or 0 if it defines none (sentencepiece's default is none).

        Padding never reaches the loss (segment_ids 0, loss_mask 0), so the value only has
        to be a valid embedding row; 0 always is.
        """
        pad = self._sp.pad_id()
        return pad if pad >= 0 else 0

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def _iter_training_text(files: Sequence[str], fmt: str, text_field: str) -> Iterator[str]:
    """Yields lines for the trainer: sentencepiece samples sentences, one per line."""
    for path in files:
        if resolve_format(path, fmt) == "text":
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.strip():
                        yield line.rstrip("\r\n")
            continue
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(
                        f"{path}:{line_no}: expected a JSON object with a string "
                        f"{text_field!r} field"
                    ) from None
                if not isinstance(text, str):
                    raise DataError(
                        f"{path}:{line_no}: {text_field!r} is a {type(text).__name__}; "
                        f"expected a string"
                    )
                for piece in text.splitlines():
                    if piece.strip():
                        yield piece


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
            pad_id=PAD_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2 if quiet else 0,
        )
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        if "smaller than required_chars" in reason:
            reason += " (byte_fallback takes 256 of the ids)"
        raise DataError(f"sentencepiece training for {model_prefix!r} failed: {reason}") from None
    return Tokenizer.load(model_prefix + ".model")
