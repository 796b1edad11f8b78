"""The synthetic corpus: deterministic, well-formed, and its arithmetic is right."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "tiny_corpus.py"

# experiments/ is scripts, not a package: load the module from its file.
_spec = importlib.util.spec_from_file_location("tiny_corpus", SCRIPT)
tiny_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_corpus)


# The test's own number words (0..20) and claim pattern, independent of the module's parser.
NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
CLAIM = re.compile(r"([a-z]+) (plus|minus) ([a-z]+) is ([a-z]+)\.")


def claims_in(text):
    """(a, op, b, c) of every sentence 'a plus/minus b is c.', numbers as ints."""
    sentences = [CLAIM.fullmatch(s) for s in re.split(r"(?<=\.) ", text)]
    return [(NUMBERS[m[1]], m[2], NUMBERS[m[3]], NUMBERS[m[4]]) for m in sentences if m is not None]


def read_texts(path):
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"text"} for r in records)
    return [r["text"] for r in records]


def test_counts_and_records(tmp_path):
    paths = tiny_corpus.write_corpus(tmp_path, n_train=300, n_eval=40, seed=0)
    assert paths == {"train": tmp_path / "train.jsonl", "eval": tmp_path / "eval.jsonl"}
    train, eval_ = read_texts(paths["train"]), read_texts(paths["eval"])
    assert (len(train), len(eval_)) == (300, 40)
    for text in train + eval_:
        assert isinstance(text, str) and text.strip() == text and text
        n_sentences = text.count(".")
        assert 1 <= n_sentences <= 5 and text.endswith(".")
    assert train[:40] != eval_  # the split is part of the seed


def test_deterministic_per_seed(tmp_path):
    a = tiny_corpus.write_corpus(tmp_path / "a", n_train=100, n_eval=10, seed=3)
    b = tiny_corpus.write_corpus(tmp_path / "b", n_train=100, n_eval=10, seed=3)
    c = tiny_corpus.write_corpus(tmp_path / "c", n_train=100, n_eval=10, seed=4)
    for split in ("train", "eval"):
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()


def test_arithmetic_sentences_are_correct(tmp_path):
    paths = tiny_corpus.write_corpus(tmp_path, n_train=1000, n_eval=0, seed=1)
    texts = read_texts(paths["train"])
    claims = [c for t in texts for c in claims_in(t)]
    assert len(claims) > 200  # about a fifth of ~3000 sentences
    assert sum(t.count(" plus ") + t.count(" minus ") for t in texts) == len(claims)
    assert {op for _, op, _, _ in claims} == {"plus", "minus"}
    for a, op, b, c in claims:
        assert c == (a + b if op == "plus" else a - b), (a, op, b, c)
        assert 0 <= c <= 20
    # The module's own checker reads the same claims and finds them all correct.
    parsed = [c for t in texts for c in tiny_corpus.parse_arithmetic(t)]
    assert parsed == [(*claim, True) for claim in claims]


def test_arithmetic_helpers():
    assert tiny_corpus.arithmetic_sentence(2, "plus", 3, 5) == "two plus three is five."
    assert tiny_corpus.arithmetic_question(7, "minus", 4) == "what is seven minus four?"
    assert tiny_corpus.parse_arithmetic("mia counts one, two. twelve minus two is nine.") == [
        (12, "minus", 2, 9, False)
    ]
    # "seventeen" must not be read as "seven"
    assert tiny_corpus.parse_arithmetic("seventeen plus three is twenty.") == [
        (17, "plus", 3, 20, True)
    ]


def test_small_vocabulary(tmp_path):
    paths = tiny_corpus.write_corpus(tmp_path, n_train=2000, n_eval=0, seed=0)
    words = {w.strip(".,") for t in read_texts(paths["train"]) for w in t.split()}
    assert 60 < len(words) < 120


def test_cli(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--n_train", "20", "--n_eval", "5"],
        check=True,
        capture_output=True,
    )
    assert len(read_texts(out / "train.jsonl")) == 20
    assert len(read_texts(out / "eval.jsonl")) == 5
