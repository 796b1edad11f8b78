"""The synthetic corpus and its RL tasks: deterministic, well-formed, the arithmetic right,
the dialogues' markers intact through the tokenizer, and the gold reward as specified."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from align_jax.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "tiny_corpus.py"

# experiments/ is scripts, not a package: import its modules from the folder.
sys.path.insert(0, str(ROOT / "experiments"))
import tiny_corpus  # noqa: E402
import tiny_tasks  # noqa: E402

# The test's own number words (0..20) and claim pattern, independent of the module's parser.
NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
WORDS = {i: w for w, i in NUMBERS.items()}
CLAIM = re.compile(r"([a-z]+) (plus|minus) ([a-z]+) is ([a-z]+)\.")
# The two dialogue forms, written out here rather than taken from the module.
QUESTION = r"user: what is ([a-z]+) (plus|minus) ([a-z]+)\? assistant: "
TAGGED = re.compile(
    QUESTION
    + r"<think> ([a-z]+) (plus|minus) ([a-z]+) is ([a-z]+)\. </think> <answer> ([a-z]+) </answer>"
)
UNTAGGED = re.compile(QUESTION + r"([a-z]+) (plus|minus) ([a-z]+) is ([a-z]+)\.")
MARKERS = ("<think>", "</think>", "<answer>", "</answer>", "user:", "assistant:")


def truth(a, op, b):
    return a + b if op == "plus" else a - b


def is_dialogue(text):
    return text.startswith("user: ")


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
        if is_dialogue(text):
            assert TAGGED.fullmatch(text) or UNTAGGED.fullmatch(text), text
            continue
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
    texts = [t for t in read_texts(paths["train"]) if not is_dialogue(t)]
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
    words = {w.strip(".,?") for t in read_texts(paths["train"]) for w in t.split()}
    assert 60 < len(words) < 120
    assert set(MARKERS) | {"what"} <= words


def test_dialogue_documents():
    texts = tiny_corpus.generate(2000, seed=1, split="train")
    dialogues = [t for t in texts if is_dialogue(t)]
    assert 0.10 < len(dialogues) / len(texts) < 0.15  # DIALOGUE_FRACTION = 1/8
    tagged = [t for t in dialogues if TAGGED.fullmatch(t)]
    untagged = [t for t in dialogues if UNTAGGED.fullmatch(t)]
    assert len(tagged) + len(untagged) == len(dialogues)  # every dialogue is one of the two
    assert 0.4 < len(tagged) / len(dialogues) < 0.6
    for text in dialogues:
        m = TAGGED.fullmatch(text) or UNTAGGED.fullmatch(text)
        a, op, b = NUMBERS[m[1]], m[2], NUMBERS[m[3]]
        assert (NUMBERS[m[4]], m[5], NUMBERS[m[6]]) == (a, op, b), text  # asked = answered
        assert NUMBERS[m[7]] == truth(a, op, b), text
        if m.re is TAGGED:
            assert m[8] == m[7], text
        # The module's checker reads the reply's claim only (the question is no claim).
        assert tiny_corpus.parse_arithmetic(text) == [(a, op, b, NUMBERS[m[7]], True)]
    # Every other document is the one a corpus without dialogues has at that position.
    rng = random.Random("tiny_corpus:1:train")
    plain = [tiny_corpus.random_document(rng) for _ in texts]
    assert [t for t in texts if not is_dialogue(t)] == [
        p for p, t in zip(plain, texts, strict=True) if not is_dialogue(t)
    ]
    assert tiny_corpus.generate(50, seed=1, split="eval") != texts[:50]


# ----------------------------------------------------------------------------- gold reward


def reward(completion, answer):
    return tiny_corpus.answer_reward(["q"], [completion], answer=[answer])[0]


@pytest.mark.parametrize(
    "completion, answer, want",
    [
        ("two plus three is five.", "five", 1.0),
        ("two plus three is four.", "five", 0.0),
        ("<think> two plus three is five. </think> <answer> five </answer>", "five", 1.0),
        ("<think> two plus three is five. </think> <answer> four </answer>", "five", 0.0),
        ("<answer>five</answer>", "five", 1.0),
        ("<answer>\n five. \n</answer>", "five", 1.0),  # whitespace and one final period
        ("<answer> six </answer> two plus three is five.", "five", 0.0),  # a tag beats words
        ("<answer> four </answer> <answer> five </answer>", "five", 1.0),  # the last tag
        ("<answer> five </answer> <answer> four </answer>", "five", 0.0),
        ("<answer> it is five </answer>", "five", 0.0),  # a tag's content is the answer
        ("<answer></answer> five", "five", 0.0),
        ("<answer> five", "five", 1.0),  # unclosed: no tag, so the last number word
        ("ten minus three is seventeen.", "seven", 0.0),  # "seventeen" is not "seven"
        ("ten plus seven is seventeen.", "seventeen", 1.0),
        ("five, then six.", "five", 0.0),  # the last number word
        ("fivefold", "five", 0.0),  # whole words only
        ("", "zero", 0.0),
        ("ten minus ten is zero.", "zero", 1.0),
    ],
)
def test_answer_reward_cases(completion, answer, want):
    assert reward(completion, answer) == want


def test_answer_reward_batch_forms_and_errors():
    conversational = [
        [{"role": "user", "content": "one"}, {"role": "assistant", "content": "is two."}],
        [{"role": "assistant", "content": "<answer> three </answer>"}],
    ]
    got = tiny_corpus.answer_reward(
        ["p", "p", "p", "p"],
        ["one plus one is two.", "nine", *conversational],
        answer=["two", None, "two", "two"],
        tests=[None] * 4,  # other fields of the record are ignored
    )
    assert got == [1.0, None, 1.0, 0.0]
    assert tiny_corpus.answer_reward(["p", "p"], ["five", "six"]) == [None, None]  # no answers
    with pytest.raises(ValueError, match="'5' is not a number word"):
        tiny_corpus.answer_reward(["p"], ["five"], answer=["5"])
    with pytest.raises(ValueError, match="1 answers for 2 completions"):
        tiny_corpus.answer_reward(["p", "p"], ["five", "six"], answer=["five"])


def test_gold_reward_by_dotted_path_through_the_config_package():
    """configs/__init__.py puts experiments/ on sys.path, so the dotted path resolves in a
    fresh process, and the spawned reward worker (which inherits sys.path) imports it too."""
    program = """if True:
        import json, sys
        import configs  # what align_jax/cli.py imports before any config file
        from align_jax.rollout.rewards import Rewards, default_config
        c = default_config()
        c.update(functions="tiny_corpus.answer_reward", num_workers=1)
        with Rewards.from_config(c) as rewards:
            got, _ = rewards(["p"] * 3, ["is five.", "<answer> six </answer>", "x"],
                             {"answer": ["five", "five", None]})
        print(json.dumps([None if v != v else v for v in got[:, 0].tolist()]))
    """
    out = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [1.0, 0.0, None]


# ----------------------------------------------------------------------------- RL prompt files


def read_records(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_rl_prompt_files(tmp_path):
    paths = tiny_tasks.write_tasks(tmp_path, n_train=200, n_eval=50, seed=0)
    forms = {
        "rl": re.compile(r"what is ([a-z]+) (plus|minus) ([a-z]+)\? "),
        "r1": re.compile(r"user: what is ([a-z]+) (plus|minus) ([a-z]+)\? assistant:"),
    }
    sft_prompts = [r["prompt"] for r in read_records(paths["sft_train"]) if "prompt" in r]
    assert sft_prompts and all(forms["rl"].fullmatch(p) for p in sft_prompts)
    for kind, form in forms.items():
        splits = {}
        for split, n in (("train", 200), ("eval", 50)):
            assert paths[f"{kind}_{split}"] == str(tmp_path / f"{kind}_{split}.jsonl")
            records = read_records(paths[f"{kind}_{split}"])
            assert len(records) == n
            for r in records:
                assert set(r) == {"prompt", "answer"}
                m = form.fullmatch(r["prompt"])
                assert m, r
                want = truth(NUMBERS[m[1]], m[2], NUMBERS[m[3]])
                assert 0 <= want <= 20 and r["answer"] == WORDS[want], r
            splits[split] = records
        assert splits["train"][:50] != splits["eval"]
    again = tiny_tasks.write_tasks(tmp_path / "again", n_train=200, n_eval=50, seed=0)
    other = tiny_tasks.write_tasks(tmp_path / "other", n_train=200, n_eval=50, seed=1)
    for key in ("rl_train", "rl_eval", "r1_train", "r1_eval"):
        assert Path(again[key]).read_bytes() == Path(paths[key]).read_bytes()
        assert Path(other[key]).read_bytes() != Path(paths[key]).read_bytes()
    # The gold reward gives the SFT completions and the corpus's dialogue replies full marks.
    sft = [r for r in read_records(paths["sft_train"]) if "prompt" in r]
    questions = [forms["rl"].fullmatch(r["prompt"]) for r in sft]
    answers = [WORDS[truth(NUMBERS[m[1]], m[2], NUMBERS[m[3]])] for m in questions]
    assert tiny_corpus.answer_reward(
        [r["prompt"] for r in sft], [r["completion"] for r in sft], answer=answers
    ) == [1.0] * len(sft)


def test_gold_reward_of_the_corpus_dialogues():
    dialogues = [t for t in tiny_corpus.generate(400, seed=2, split="train") if is_dialogue(t)]
    prompts, replies, answers = [], [], []
    for text in dialogues:
        m = TAGGED.fullmatch(text) or UNTAGGED.fullmatch(text)
        prompt, _, reply = text.partition("assistant:")
        prompts.append(prompt + "assistant:")
        replies.append(reply)
        answers.append(WORDS[truth(NUMBERS[m[1]], m[2], NUMBERS[m[3]])])
    assert tiny_corpus.answer_reward(prompts, replies, answer=answers) == [1.0] * len(dialogues)
    wrong = [WORDS[(NUMBERS[a] + 1) % 21] for a in answers]
    assert tiny_corpus.answer_reward(prompts, replies, answer=wrong) == [0.0] * len(dialogues)


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("fixture, vocab", [("tiny_data", 384), ("chain_data", 512)])
def test_dialogue_markers_survive_the_tokenizers(fixture, vocab, request):
    """With the test fixtures' tokenizers (trained on the corpus), every marker and every
    dialogue encodes to ordinary pieces (no byte fallback, no unk) and decodes back exactly,
    and a dialogue's R1 prompt encodes to a prefix of the whole dialogue's tokens, so the
    policy starts RL where pretraining left it."""
    data = request.getfixturevalue(fixture)
    tok = Tokenizer.load(str(data / "tok.model"))
    sp = spm.SentencePieceProcessor(model_file=str(data / "tok.model"))
    assert tok.vocab_size == vocab
    dialogues = [t for t in read_texts(data / "train.jsonl") if is_dialogue(t)]
    assert len(dialogues) > 40
    r1_prompts = [r["prompt"] for r in read_records(data / "r1_train.jsonl")]
    for text in [*MARKERS, *(" " + m for m in MARKERS), *dialogues, *r1_prompts]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert not any(sp.is_byte(i) or sp.is_unknown(i) for i in ids), (text, ids)
    for text in dialogues:
        prompt = text[: text.index("assistant:") + len("assistant:")]
        assert tok.encode(text)[: len(tok.encode(prompt))] == tok.encode(prompt), text


def test_cli(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--n_train", "20", "--n_eval", "5"],
        check=True,
        capture_output=True,
    )
    assert len(read_texts(out / "train.jsonl")) == 20
    assert len(read_texts(out / "eval.jsonl")) == 5


def test_demo_task_files_have_their_error_and_noise_rates(tmp_path):
    """The demo's careless demonstrations copy a number from the question 30% of the time
    (when one differs from the answer); its gold pairs put the right sentence first 90% of
    the time, and their wrong answers are copied numbers 70% of the time, else near misses."""
    paths = tiny_tasks.write_tasks(tmp_path, n_train=4000, n_eval=10, seed=0)
    form = re.compile(r"what is ([a-z]+) (plus|minus) ([a-z]+)\? ")
    sentence = re.compile(r"([a-z]+) (plus|minus) ([a-z]+) is ([a-z]+)\.")

    def parse(prompt, text):
        q, s = form.fullmatch(prompt), sentence.fullmatch(text)
        a, op, b = NUMBERS[q[1]], q[2], NUMBERS[q[3]]
        assert s and (NUMBERS[s[1]], s[2], NUMBERS[s[3]]) == (a, op, b), text
        return a, b, truth(a, op, b), NUMBERS[s[4]]

    copies = could_copy = 0
    for r in read_records(paths["demo_sft_train"]):
        a, b, right, given = parse(r["prompt"], r["completion"])
        if {a, b} - {right}:
            could_copy += 1
            copies += given != right
            assert given in (right, a, b)
        else:
            assert given == right
    assert copies / could_copy == pytest.approx(tiny_tasks.DEMO_SFT_ERROR_RATE, abs=0.03)

    pairs = read_records(paths["gold_pairs_train"])
    right_first = copied = 0
    for r in pairs:
        a, b, right, chosen = parse(r["prompt"], r["chosen"])
        *_, rejected = parse(r["prompt"], r["rejected"])
        assert (chosen == right) != (rejected == right)
        right_first += chosen == right
        wrong = rejected if chosen == right else chosen
        copied += wrong in (a, b)
        assert wrong in (a, b) or 0 < abs(wrong - right) <= 3
    assert right_first / len(pairs) == pytest.approx(1 - tiny_tasks.GOLD_LABEL_NOISE, abs=0.02)
    # A copy is only possible where the question has a number that is not the answer.
    assert copied / len(pairs) == pytest.approx(tiny_tasks.GOLD_PAIR_COPY_RATE, abs=0.06)
