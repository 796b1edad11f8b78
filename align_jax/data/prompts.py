"""Prompts for online RL: JSONL records -> batches of prompt token ids, text and fields (grain).

Records (`PromptRecords`): a string `prompt`, or a `messages` list of `{"role", "content"}`
turns (roles system / user / assistant) that ends before the reply, not both; every other
field (`answer`, `tests`, ...) is passed through untouched, as parsed from JSON, for the
reward functions. A missing or mistyped field, a conversation whose last turn is the
assistant's, invalid JSON, non-UTF-8 bytes: one-line `DataError`s naming `file:line` (an
empty file: the file), as align_jax/data/sources.py validates every record at start-up.
Skipped and counted: prompts with no text (`skipped_empty_prompt`).

Tokens, as the SFT stage encodes the same text (align_jax/data/records.py):
- `prompt`: bos (`config.data.add_bos`) + `tokenizer.encode(prompt)`, used as is (no chat
  template; TRL's "standard" format).
- `messages`: the conversation in `config.data.chat_template` followed by the generation
  prompt (the assistant marker; with `checkpoint`, the tokenizer's own template with
  `add_generation_prompt=True`), tokenized piece by piece exactly as SFT tokenized those
  turns (`records.prompt_pieces`), after bos. TRL's "conversational" format, with the
  conversation in `messages` rather than in `prompt`.
No eos: the policy continues the prompt.

Length: prompts longer than `config.data.max_prompt_len` tokens keep bos and their last
`max_prompt_len - 1` tokens (left truncation, so the question at the end survives), or are
dropped with `config.data.overlong='drop'`; either way they are counted. TRL and verl
left-truncate too but keep the last `max_prompt_len` tokens, bos included only if it fits;
keeping bos spares the model a start it never saw in training. verl's default is to raise.

Batches: a list of one dict per prompt:
- `prompt_ids`: list[int], at most `max_prompt_len` long, ragged (the sampler left-pads);
- `prompt`: str, the full text the ids encode (after bos, before truncation): the `prompt`
  field, or the rendered conversation; for reward functions and sample logs;
- `fields`: dict, every field of the record but `prompt` (a `messages` list stays here, as
  TRL hands a conversational prompt to its reward functions);
- `index`: int, the record's position in the source; `truncated`: bool; `valid`: bool
  (False only on eval padding).

Train (`make_train_iterator`): `config.data.batch_size` prompts per step, global across
processes (verl's `data.train_batch_size`; each prompt is then sampled n times), drawn as
in every stage (align_jax/data/pipeline.py): a permutation of the records per epoch from
`seed` (`config.data.shuffle`), `config.data.num_epochs` epochs (0: endless), each step's
global batch split into contiguous shares, so process p holds positions [p·b, (p+1)·b) of
it (b = batch_size / processes) and the global batch is the same on any number of
processes. Its whole position is one batch count:
`get_state` / `set_state`, or Orbax with `grain.checkpoint.CheckpointSave` /
`CheckpointRestore`, resume it exactly. Eval (`make_eval_iterator`): the eval split once in
file order, global batches of `batch_size` of which each process keeps its slice; the
last is padded with copies of its first prompt (`valid` False), so every process yields the
same number of equally sized batches (verl pads its validation batch alike).

Config keys: `train_files` / `eval_files`, `format`, `chat_template`, `add_bos`,
`batch_size`, `shuffle`, `num_epochs`, `overlong`, `read_threads`, `prefetch_batches`, and
`max_prompt_len` (an integer >= 1 + add_bos; this module adds no default).
"""

from __future__ import annotations

import grain
import numpy as np

from align_jax.data.pipeline import (
    Examples,
    check_config,
    local_shard,
    prefetch,
    read_options,
    shuffled_share,
    split_records,
)
from align_jax.data.records import check_messages, encode_pieces, prompt_pieces
from align_jax.data.sources import DataError, RecordKind, RecordSource, require_fields


class PromptRecords(RecordKind):
    """Prompt records (dicts, as in the file); see the module docstring."""

    name = "prompt"
    fields = (
        "a string 'prompt' or a 'messages' list of {'role', 'content'} turns ending before "
        "the reply (not both); any other fields go to the reward functions"
    )
    skips = ("empty_prompt",)

    def check(self, record: dict, where: str, expected: str) -> str | None:
        if "prompt" in record and "messages" in record:
            raise DataError(f"{where}: both 'prompt' and 'messages'; {expected}")
        if "messages" not in record:
            if "prompt" not in record:
                names = ", ".join(sorted(record)) or "none"
                raise DataError(
                    f"{where}: no 'prompt' or 'messages' field (fields: {names}); {expected}"
                )
            require_fields(record, where, expected, {"prompt": str})
            return None if record["prompt"].strip() else "empty_prompt"
        turns = check_messages(record, where, expected)
        if turns[-1]["role"] == "assistant":
            raise DataError(
                f"{where}: messages end with an assistant turn; {expected} (put a reference "
                "reply in another field, e.g. 'answer')"
            )
        return None if any(t["content"].strip() for t in turns) else "empty_prompt"


def max_prompt_len(data_cfg) -> int:
    """`config.data.max_prompt_len`, checked: room for bos and at least one token."""
    least = 1 + bool(data_cfg.add_bos)
    if "max_prompt_len" not in data_cfg:
        raise DataError(
            f"config.data.max_prompt_len is not set; expected an integer >= {least} (prompt "
            "tokens per sample; longer prompts keep their last tokens)"
        )
    value = data_cfg.max_prompt_len
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise DataError(f"config.data.max_prompt_len={value!r}; expected an integer >= {least}")
    return value


def render_prompt(record: dict, tokenizer, data_cfg) -> tuple[list[int], str]:
    """(bos + the prompt's token ids, untruncated; the text they encode after bos)."""
    if "messages" in record:
        pieces = prompt_pieces(record["messages"], data_cfg.chat_template, tokenizer)
    else:
        pieces = [(record["prompt"], False)]
    tokens, _ = encode_pieces(tokenizer, pieces, add_bos=data_cfg.add_bos, add_eos=False)
    return tokens.tolist(), "".join(text for text, _ in pieces)


def encode_prompt(record: dict, tokenizer, data_cfg) -> dict:
    """One prompt of a batch (see the module docstring), `valid` True."""
    ids, text = render_prompt(record, tokenizer, data_cfg)
    limit = max_prompt_len(data_cfg)
    truncated = len(ids) > limit
    if truncated:
        head = int(bool(data_cfg.add_bos))  # bos stays at the start
        ids = ids[:head] + ids[len(ids) - (limit - head) :]
    fields = {k: v for k, v in record.items() if k not in ("prompt", "_index")}
    return {
        "prompt_ids": ids,
        "prompt": text,
        "fields": fields,
        "index": int(record["_index"]),
        "truncated": truncated,
        "valid": True,
    }


class PromptSource(Examples):
    """A split's prompts for the iterators (grain's random-access protocol): the validated
    records less those over `max_prompt_len` when `config.data.overlong` is 'drop'. Every
    record is tokenized once at start-up for the counts and length statistics."""

    def __init__(self, records: RecordSource, tokenizer, data_cfg):
        limit = max_prompt_len(data_cfg)
        lengths = []

        def length(record: dict) -> int:
            lengths.append(len(render_prompt(record, tokenizer, data_cfg)[0]))
            return lengths[-1]

        super().__init__(records, length, limit, data_cfg.overlong)
        self._lengths = np.asarray(lengths)

    def stats(self) -> dict:
        """Record counts, over-long prompts, and prompt lengths in tokens (bos included,
        before truncation, over every valid record) for the trainer to log once."""
        n = self._lengths
        return {
            **super().stats(),
            "prompt_tokens_min": int(n.min()),
            "prompt_tokens_mean": round(float(n.mean()), 1),
            "prompt_tokens_max": int(n.max()),
        }


def load_source(data_cfg, split: str, tokenizer) -> PromptSource:
    """The validated prompts of `config.data.<split>_files` (split: "train" or "eval")."""
    return PromptSource(split_records(data_cfg, split, PromptRecords()), tokenizer, data_cfg)


class _Encode(grain.transforms.Map):
    def __init__(self, tokenizer, data_cfg):
        self._tokenizer, self._cfg = tokenizer, data_cfg

    def map(self, record: dict) -> dict:
        return encode_prompt(record, self._tokenizer, self._cfg)


def train_dataset(
    data_cfg, tokenizer, *, seed: int, source: PromptSource, process_index=None, process_count=None
) -> grain.IterDataset:
    """This process's share of every step's `batch_size` prompts, endless over epochs (or
    `num_epochs` of them); `process_index` / `process_count` default to jax's."""
    check_config(data_cfg)
    max_prompt_len(data_cfg)
    ds, local_batch = shuffled_share(source, data_cfg, seed, process_index, process_count)
    # Batched by index, so the iterator's checkpoint state is a batch count.
    ds = ds.map(_Encode(tokenizer, data_cfg)).batch(local_batch, drop_remainder=True, batch_fn=list)
    return prefetch(ds.to_iter_dataset(read_options(data_cfg)), data_cfg)


def eval_dataset(
    data_cfg, tokenizer, *, source: PromptSource, process_index=None, process_count=None
) -> grain.IterDataset:
    """One pass over `source` in file order, each `iter()` a fresh one; arguments as for
    `train_dataset`. The last global batch is padded (`valid` False)."""
    check_config(data_cfg)
    max_prompt_len(data_cfg)
    process_index, process_count, local_batch = local_shard(data_cfg, process_index, process_count)
    ds = grain.MapDataset.source(source).map(_Encode(tokenizer, data_cfg))
    ds = ds.batch(data_cfg.batch_size, batch_fn=list)  # every process builds all of it
    lo = process_index * local_batch
    ds = ds.map(_PadAndSlice(data_cfg.batch_size, lo, lo + local_batch))
    return prefetch(ds.to_iter_dataset(read_options(data_cfg)), data_cfg)


def make_train_iterator(data_cfg, tokenizer, **kwargs) -> grain.DatasetIterator:
    """`iter(train_dataset(...))`; checkpointable (see the module docstring)."""
    return iter(train_dataset(data_cfg, tokenizer, **kwargs))


def make_eval_iterator(data_cfg, tokenizer, **kwargs) -> grain.DatasetIterator:
    """`iter(eval_dataset(...))`: a fresh eval pass."""
    return iter(eval_dataset(data_cfg, tokenizer, **kwargs))


class _PadAndSlice(grain.transforms.Map):
    """Pads a (possibly short) global batch to `size` prompts with invalid copies of its
    first one, keeps prompts [lo, hi)."""

    def __init__(self, size: int, lo: int, hi: int):
        self._size, self._lo, self._hi = size, lo, hi

    def map(self, batch: list[dict]) -> list[dict]:
        pad = {**batch[0], "valid": False}
        return (batch + [pad] * (self._size - len(batch)))[self._lo : self._hi]
