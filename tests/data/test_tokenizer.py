"""Tokenizer: training on our formats, lossless round trips, and load errors that name the path.

References: sentencepiece's own `SentencePieceProcessor` on the trained model file, and ids
known by hand (the fixed special ids; byte-fallback pieces: id 4 + the byte's value).
"""

import importlib.util
import json
import pathlib
import random

import pytest
import sentencepiece as spm

from align_jax.data import DataError, Tokenizer, train_tokenizer

WORDS = (
    "the a cat dog runs jumps over under quick brown lazy fox river mountain model data "
    "token train learn 12 345 2024 café naïve über straße"
).split()

# The trainer needs vocab > 256 byte pieces + 4 specials + distinct characters.
VOCAB = 320


def _sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok_corpus")
    sents = _sentences(400)
    (d / "a.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sents[:200]))
    (d / "b.txt").write_text("\n\n".join(sents[200:]) + "\n")
    return d


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer(
        [str(corpus / "a.jsonl"), str(corpus / "b.txt")], str(corpus / "out" / "tok"), VOCAB
    )


@pytest.fixture(scope="module")
def processor(tok):
    """sentencepiece's own reader of the trained model file."""
    return spm.SentencePieceProcessor(model_file=tok.path)


def test_special_ids_and_vocab(tok, processor):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert [processor.IdToPiece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert tok.vocab_size == processor.GetPieceSize() == VOCAB


@pytest.mark.parametrize(
    "text",
    [
        "the quick brown fox",
        "  leading and   inner   spaces, trailing ",
        "lines\nand\n\nparagraphs\n",
        "unseen: Ωμέγα 東京 😀 \t tab",
        "digits 1234567890",
        "",
    ],
)
def test_round_trip(tok, processor, text):
    ids = tok.encode(text)
    assert ids == processor.EncodeAsIds(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == processor.DecodeIds(ids) == text


def test_pieces_spell_the_text(tok, processor):
    # No dummy prefix and no whitespace folding: the pieces, "▁" read as a space, are the text.
    text = "the  river model under a  fox "
    pieces = [processor.IdToPiece(i) for i in tok.encode(text)]
    assert "".join(pieces).replace("▁", " ") == text


@pytest.mark.parametrize("char", ["😀", "東", "Ω", "\t"])
def test_unseen_characters_fall_back_to_bytes(tok, char):
    # Byte pieces follow the four specials: <0x00> is id 4.
    assert tok.encode(char) == [4 + b for b in char.encode("utf-8")]


def test_load_reads_trained_model(tok, processor):
    again = Tokenizer.load(tok.path)
    for text in ("the river model", "naïve über straße 2024"):
        assert again.encode(text) == processor.EncodeAsIds(text)
    assert again.vocab_size == processor.GetPieceSize()


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.model"
    with pytest.raises(DataError, match=rf"{path}: no such file; expected a sentencepiece"):
        Tokenizer.load(str(path))


def test_garbage_file_names_path(tmp_path):
    path = tmp_path / "garbage.model"
    path.write_bytes(b"this is not a protobuf \x00\xff\x01")
    with pytest.raises(DataError) as e:
        Tokenizer.load(str(path))
    msg = str(e.value)
    assert str(path) in msg and "expected a sentencepiece .model file" in msg
    assert "\n" not in msg


def test_directory_names_path(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}: is a directory"):
        Tokenizer.load(str(tmp_path))


def test_vocab_too_small_for_byte_fallback(corpus, tmp_path):
    with pytest.raises(DataError, match="byte_fallback takes 256 of the ids"):
        train_tokenizer([str(corpus / "a.jsonl")], str(tmp_path / "t"), 100)


def test_empty_tokenizer_key():
    with pytest.raises(DataError, match="config.data.tokenizer is empty"):
        Tokenizer.load("")


def test_bad_jsonl_in_training_input(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: "):
        train_tokenizer([str(path)], str(tmp_path / "t"), VOCAB)


def test_cli(corpus, tmp_path, capsys):
    script = pathlib.Path(__file__).parents[2] / "tools" / "train_tokenizer.py"
    spec = importlib.util.spec_from_file_location("train_tokenizer_cli", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    prefix = tmp_path / "cli" / "tok"
    argv = ["--input", f"{corpus}/*.jsonl,{corpus}/b.txt", "--model_prefix", str(prefix)]
    assert cli.main(argv + ["--vocab_size", str(VOCAB)]) == 0
    assert "vocab_size=320" in capsys.readouterr().out
    assert Tokenizer.load(f"{prefix}.model").vocab_size == VOCAB
    # A glob that matches nothing is a one-line error naming the flag and the pattern.
    assert (
        cli.main(
            ["--input", f"{tmp_path}/*.none", "--model_prefix", str(prefix)]
            + ["--vocab_size", "300"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "--input" in err and "*.none" in err and "matches no file" in err
