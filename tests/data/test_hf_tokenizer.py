"""Hugging Face tokenizers behind `Tokenizer.load`, and the `checkpoint` chat template.

References: the `tokenizers` package itself (encode/decode), sentencepiece's own
`SentencePieceProcessor`, and transformers' `apply_chat_template` / `encode` / `decode`
(rendering, and what the trained tokens of a chat are); a tiny byte-level BPE tokenizer is
trained here.
"""

import json
import random
import shutil
import sys

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from align_jax.config import base_config
from align_jax.data import sft
from align_jax.data.records import encode_sft
from align_jax.data.sources import DataError
from align_jax.data.tokenizer import Tokenizer, train_tokenizer
from align_jax.generate import render

WORDS = "the cat sat on a mat and two plus three is five what user assistant system café".split()
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
END = "<|im_end|>\n"  # what the template below closes every turn with

# ChatML-like, written with indented block tags so trim_blocks / lstrip_blocks matter.
TEMPLATE = """{{ bos_token }}
{%- for m in messages %}
    {%- if m.role == 'system' and not loop.first %}
        {{ raise_exception('system message not first') }}
    {%- endif %}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

CHATS = [
    [
        {"role": "system", "content": "the cat"},
        {"role": "user", "content": "what is two"},
        {"role": "assistant", "content": "two is two"},
        {"role": "user", "content": "and three"},
        {"role": "assistant", "content": "three is three café"},
    ],
    [{"role": "user", "content": "what"}, {"role": "assistant", "content": " five\n"}],
    [{"role": "user", "content": "the mat"}],
]


def _sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _config(**kw):
    return {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, **kw}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint directory: tokenizer.json + tokenizer_config.json with TEMPLATE."""
    d = tmp_path_factory.mktemp("hf_ckpt")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_sentences(300), trainer)
    # A post-processor that adds bos: encode must not apply it (the pipeline adds bos).
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    tok.save(str(d / "tokenizer.json"))
    config = _config(pad_token="<pad>", chat_template=TEMPLATE)
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def ref(ckpt):
    """transformers' view of the same checkpoint (the rendering reference)."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(ckpt / "tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=TEMPLATE,
    )


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    (d / "c.txt").write_text("\n\n".join(_sentences(400)))
    return train_tokenizer([str(d / "c.txt")], str(d / "tok"), 320).path


def data_cfg(train="x", **kw):
    c = base_config().data
    c.update(train_files=train, eval_files=train, seq_len=64, batch_size=4, shuffle=False)
    c.update({"prefetch_batches": 0, "chat_template": "checkpoint", "add_bos": False, **kw})
    return c


TEXTS = [
    "the cat sat on a mat",
    "  two\tplus\n\nthree ",
    "unseen: Ωμέγα 東京 😀",
    "<|im_end|>x",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_equal_tokenizers(ckpt, text):
    direct = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok = Tokenizer.load(str(ckpt))
    ids = tok.encode(text)
    assert ids == direct.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == direct.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(np.asarray(ids, np.int32)) == text


def test_special_ids_and_vocab(ckpt):
    direct = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok = Tokenizer.load(str(ckpt))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)  # SPECIALS' order
    assert tok.vocab_size == direct.get_vocab_size(with_added_tokens=True)
    assert tok.chat_template == TEMPLATE
    # tokenizer.json alone names no bos/eos/pad and holds no template.
    bare = ckpt.parent / "bare"
    bare.mkdir(exist_ok=True)
    shutil.copy(ckpt / "tokenizer.json", bare / "tokenizer.json")
    tok = Tokenizer.load(str(bare / "tokenizer.json"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.chat_template) == (-1, -1, 0, None)


@pytest.mark.parametrize("kind", ["directory", "json", "sentencepiece", "sentencepiece_dir"])
def test_one_interface_for_every_backend(kind, ckpt, sp_model, tmp_path):
    path = {
        "directory": str(ckpt),
        "json": str(ckpt / "tokenizer.json"),
        "sentencepiece": sp_model,
        "sentencepiece_dir": str(tmp_path),
    }[kind]
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    tok = Tokenizer.load(path)
    assert isinstance(tok, Tokenizer) and tok.path.startswith(path)
    text = "the cat sat on a mat, café"
    if kind.startswith("sentencepiece"):
        direct = spm.SentencePieceProcessor(model_file=sp_model)
        expected, vocab = direct.EncodeAsIds(text), direct.GetPieceSize()
    else:
        direct = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        expected = direct.encode(text, add_special_tokens=False).ids
        vocab = direct.get_vocab_size(with_added_tokens=True)
    ids = tok.encode(text)
    assert ids == expected and all(isinstance(i, int) for i in ids)
    assert tok.vocab_size == vocab and tok.decode(ids) == text
    # Both backends put pad, bos, eos first (SPECIALS here; the trainer's fixed ids there).
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("chat", range(len(CHATS)))
def test_chat_rendering_equals_transformers(ckpt, ref, chat, generation_prompt):
    tok = Tokenizer.load(str(ckpt))
    messages = CHATS[chat]
    expected = ref.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert tok.apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected
    # Special-token strings in the rendered text become their ids, as in transformers.
    assert tok.encode(expected) == ref.encode(expected, add_special_tokens=False)


def test_generate_renders_with_checkpoint_template(ckpt, ref):
    tok = Tokenizer.load(str(ckpt))
    turn = [{"role": "user", "content": "what is two"}]
    expected = ref.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    assert render("what is two", "checkpoint", tok) == expected


def test_template_sources(ckpt, tmp_path):
    shutil.copy(ckpt / "tokenizer.json", tmp_path / "tokenizer.json")
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(_config(chat_template=named)))
    assert Tokenizer.load(str(tmp_path)).chat_template == TEMPLATE
    # chat_template.jinja beside it wins, as in transformers.
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0].content }}")
    tok = Tokenizer.load(str(tmp_path / "tokenizer.json"))
    assert tok.apply_chat_template(CHATS[0]) == "the cat"


def test_checkpoint_mask_covers_assistant_turns(ckpt, ref):
    tok = Tokenizer.load(str(ckpt))
    messages = CHATS[0]
    tokens, mask = encode_sft({"messages": messages}, tok, data_cfg())
    # The whole example is the transformers rendering, then eos.
    rendered = ref.apply_chat_template(messages, tokenize=False)
    assert ref.decode(tokens[:-1].tolist(), skip_special_tokens=False) == rendered
    assert tokens[-1] == ref.eos_token_id and mask[-1] == 1
    # Trained: each assistant content plus the template's end of turn, encoded on its own.
    replies = [m["content"] + END for m in messages if m["role"] == "assistant"]
    expected = sum((ref.encode(r, add_special_tokens=False) for r in replies), [])
    assert tokens[mask > 0][:-1].tolist() == expected


def test_checkpoint_template_through_the_sft_pipeline(ckpt, ref, tmp_path):
    tok = Tokenizer.load(str(ckpt))
    path = tmp_path / "chats.jsonl"
    records = [{"messages": CHATS[i % 2]} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = data_cfg(str(path), seq_len=128, packing=False)
    batch = next(
        sft.make_train_iterator(cfg, tok, seed=0, source=sft.load_source(cfg, "train", tok))
    )
    for row, r in enumerate(records):
        trained = batch["targets"][row][batch["loss_mask"][row] > 0].tolist()
        replies = [m["content"] + END for m in r["messages"] if m["role"] == "assistant"]
        expected = sum((ref.encode(x, add_special_tokens=False) for x in replies), [])
        assert trained == expected + [ref.eos_token_id]


def test_sentencepiece_checkpoint_dir_reads_specials(sp_model, tmp_path):
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(_config(chat_template=TEMPLATE)))
    tok = Tokenizer.load(str(tmp_path))
    text = tok.apply_chat_template(CHATS[1])
    assert text.startswith("<s><|im_start|>user\n") and text.count("<s>") == 1
    direct = spm.SentencePieceProcessor(model_file=sp_model)
    # "<s>" is the bos id (1); the rest is sentencepiece's encoding of the text after it.
    ids = tok.encode(text)
    assert ids == [1] + direct.EncodeAsIds(text[len("<s>") :]) and tok.decode(ids) == text
    # A bare .model keeps sentencepiece's behaviour: "<s>" in text is text.
    bare = Tokenizer.load(sp_model).encode("<s>")
    assert bare == direct.EncodeAsIds("<s>") and 1 not in bare


def _one_line_error(fn, *needles):
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_bad_input_is_one_line_naming_the_file(ckpt, tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    _one_line_error(lambda: Tokenizer.load(str(missing)), f"{missing}: no such file")
    _one_line_error(lambda: Tokenizer.load(str(tmp_path)), f"{tmp_path}: is a directory without")
    corrupt = tmp_path / "tokenizer.json"
    corrupt.write_text('{"model": {"type": "BPE", "vocab": [1, 2')
    _one_line_error(
        lambda: Tokenizer.load(str(tmp_path)), f"{corrupt}: cannot load", "tokenizer.json"
    )
    shutil.copy(ckpt / "tokenizer.json", corrupt)
    config = tmp_path / "tokenizer_config.json"
    config.write_text("{not json")
    _one_line_error(lambda: Tokenizer.load(str(corrupt)), f"{config}: not valid JSON")
    config.write_text(json.dumps(_config(bos_token="<bos>")))
    _one_line_error(lambda: Tokenizer.load(str(corrupt)), f"{config}: bos_token '<bos>'")


def test_chat_template_errors_name_the_tokenizer(ckpt, tmp_path):
    shutil.copy(ckpt / "tokenizer.json", tmp_path / "tokenizer.json")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps(_config()))
    tok = Tokenizer.load(str(tmp_path))
    record = {"messages": CHATS[1]}
    _one_line_error(lambda: encode_sft(record, tok, data_cfg()), str(tok.path), "no chat template")
    # The template's own raise_exception.
    bad = [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]
    tok = Tokenizer.load(str(ckpt))
    _one_line_error(lambda: tok.apply_chat_template(bad), str(tok.path), "system message not first")
    # A template that rewrites earlier turns once later ones follow has no assistant spans.
    late = "{% for m in messages %}{{ m.content if loop.last else '-' }}{% endfor %}"
    config.write_text(json.dumps(_config(chat_template=late)))
    tok = Tokenizer.load(str(tmp_path))
    _one_line_error(lambda: encode_sft(record, tok, data_cfg()), str(tok.path), "prefix by prefix")
    # add_bos with a tokenizer that has no bos.
    config.write_text(json.dumps({"chat_template": TEMPLATE}))
    tok = Tokenizer.load(str(tmp_path))
    _one_line_error(lambda: encode_sft(record, tok, data_cfg(add_bos=True)), "add_bos=True")


def test_missing_hf_extra_is_one_line(ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    _one_line_error(lambda: Tokenizer.load(str(ckpt)), str(ckpt), "pip install 'align_jax[hf]'")
