"""A tiny synthetic English-like corpus with structure a small model learns in minutes.

    python experiments/tiny_corpus.py --out data/tiny --n_train 4000 --n_eval 200

writes `data/tiny/train.jsonl` and `data/tiny/eval.jsonl`, one `{"text": ...}` document a
line. Most documents are 1-5 sentences from a small template grammar:

    the small cat chases the red ball.          verb picks its object class
    mia has three green apples.                 number words agree with the plural
    two plus three is five.                     arithmetic, always correct
    tom counts four, five, six.                 counting runs
    the old dog is happy.                       copula + adjective

About one document in eight (`DIALOGUE_FRACTION`) is instead a one-turn dialogue, half of
them in DeepSeek-R1-Zero's format (arXiv 2501.12948) and half without its tags (each is one
line in the file):

    user: what is two plus three? assistant: <think> two plus three is five. </think>
        <answer> five </answer>
    user: what is two plus three? assistant: two plus three is five.

so a model fresh from pretraining sometimes answers `dialogue_prompt` in that format, and RL
straight from pretraining (R1-Zero style) has something to reinforce. Dialogues draw from
their own random stream and replace a document in place, so every other document is the one
a corpus without dialogues holds at that position.

The vocabulary is about 85 words (plurals and the dialogues' markers included), and most
tokens are predictable from a few before them (a verb fixes its object class, "is" after an
arithmetic question fixes the answer, a counting run fixes the next number), so a tiny
model's pretraining loss falls far below its start within a couple of hundred steps.
Later stages build their tasks from the same pieces: `random_arithmetic` +
`arithmetic_question` give SFT prompts and verifiable answers, a wrong `answer` gives the
rejected side of a preference pair, `parse_arithmetic` checks any text's arithmetic claims,
and `answer_reward` is the gold reward of online RL on these questions (named in configs by
its dotted path `tiny_corpus.answer_reward`; configs/__init__.py puts experiments/ on
sys.path).

Deterministic per seed (string seeds hash with SHA-512 in `random.Random`, so
PYTHONHASHSEED does not matter). The generator needs the standard library only; the module
imports align_jax for `completion_text`, so `answer_reward` reads a completion exactly as
align_jax's own reward functions do.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from align_jax.rollout.rewards import completion_text

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()
MAX_NUMBER = len(NUMBER_WORDS) - 1  # twenty
WORD_TO_NUMBER = {w: i for i, w in enumerate(NUMBER_WORDS)}

NAMES = ("mia", "tom", "ana", "leo", "zoe", "sam", "ivy", "max")
ANIMALS = ("cat", "dog", "bird", "fox", "horse", "mouse")
ADJECTIVES = ("small", "big", "red", "green", "old", "new", "happy", "quiet")
# Each verb takes objects of one class only: a dependency the model has to learn.
OBJECTS = {
    "food": ("apple", "cake", "fish", "pear", "bread"),
    "toy": ("ball", "kite", "drum", "box"),
    "text": ("book", "letter", "map", "poem"),
}
VERBS = {
    "eats": "food",
    "likes": "food",
    "chases": "toy",
    "throws": "toy",
    "reads": "text",
    "writes": "text",
}
COUNTABLE = ("apple", "pear", "cake", "ball", "kite", "book", "letter", "cat", "dog", "bird")


def number_word(n: int) -> str:
    """0..20 as an English word."""
    return NUMBER_WORDS[n]


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


# ----------------------------------------------------------------------------- arithmetic


def random_arithmetic(rng: random.Random) -> tuple[int, str, int, int]:
    """(a, op, b, answer) with op in {plus, minus} and every number in 0..20."""
    if rng.random() < 0.5:
        a = rng.randint(0, MAX_NUMBER)
        b = rng.randint(0, MAX_NUMBER - a)
        return a, "plus", b, a + b
    a = rng.randint(0, MAX_NUMBER)
    b = rng.randint(0, a)
    return a, "minus", b, a - b


def arithmetic_sentence(a: int, op: str, b: int, answer: int) -> str:
    """'two plus three is five.' (with whatever `answer` is given, right or wrong)."""
    return f"{number_word(a)} {op} {number_word(b)} is {number_word(answer)}."


def arithmetic_question(a: int, op: str, b: int) -> str:
    """'what is two plus three?': a prompt whose completion is `arithmetic_sentence`."""
    return f"what is {number_word(a)} {op} {number_word(b)}?"


_NUMBER_RE = "|".join(sorted(NUMBER_WORDS, key=len, reverse=True))
ARITHMETIC_RE = re.compile(rf"\b({_NUMBER_RE}) (plus|minus) ({_NUMBER_RE}) is ({_NUMBER_RE})\b")


def parse_arithmetic(text: str) -> list[tuple[int, str, int, int, bool]]:
    """Every 'a plus/minus b is c' claim in `text` as (a, op, b, c, correct)."""
    claims = []
    for a_w, op, b_w, c_w in ARITHMETIC_RE.findall(text):
        a, b, c = WORD_TO_NUMBER[a_w], WORD_TO_NUMBER[b_w], WORD_TO_NUMBER[c_w]
        truth = a + b if op == "plus" else a - b
        claims.append((a, op, b, c, c == truth))
    return claims


# ----------------------------------------------------------------------------- gold reward

_NUMBER_WORD_RE = re.compile(rf"\b(?:{_NUMBER_RE})\b")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def final_answer(text: str) -> str | None:
    """The final answer in `text`: the content of its last `<answer>...</answer>`, stripped of
    surrounding whitespace and one final period, if it has one; else its last number word
    (whole words only: "seventeen" is not "seven"); None if there is neither."""
    tags = _ANSWER_TAG_RE.findall(text)
    if tags:
        content = tags[-1].strip()
        return content.removesuffix(".").strip()
    words = _NUMBER_WORD_RE.findall(text)
    return words[-1] if words else None


def answer_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    **fields: Any,
) -> list[float | None]:
    """The gold reward of the arithmetic questions, a reward function as
    align_jax/rollout/rewards.py defines them: 1.0 when a completion's `final_answer` is the
    sample's `answer` (a number word, "five"), else 0.0; None where the answer is None (or no
    `answer` field is given). A completion may be text or a list of messages (the last one's
    content counts). An answer that is not a number word zero..twenty is a ValueError: the
    data is wrong, and the training run stops on it naming the prompt."""
    if answer is None:
        return [None] * len(completions)
    if len(answer) != len(completions):
        raise ValueError(f"{len(answer)} answers for {len(completions)} completions")
    rewards: list[float | None] = []
    for completion, want in zip(completions, answer, strict=True):
        if want is None:
            rewards.append(None)
            continue
        if want not in WORD_TO_NUMBER:
            raise ValueError(f"answer {want!r} is not a number word (zero..twenty)")
        rewards.append(1.0 if final_answer(completion_text(completion)) == want else 0.0)
    return rewards


# ----------------------------------------------------------------------------- sentences


def _subject(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(NAMES)
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)}"


def _action(rng: random.Random) -> str:
    verb = rng.choice(tuple(VERBS))
    obj = rng.choice(OBJECTS[VERBS[verb]])
    adj = f"{rng.choice(ADJECTIVES)} " if rng.random() < 0.5 else ""
    return f"{_subject(rng)} {verb} the {adj}{obj}."


def _possession(rng: random.Random) -> str:
    n = rng.randint(1, 9)
    noun = rng.choice(COUNTABLE)
    adj = f"{rng.choice(ADJECTIVES)} " if rng.random() < 0.5 else ""
    return f"{rng.choice(NAMES)} has {number_word(n)} {adj}{noun if n == 1 else plural(noun)}."


def _arithmetic(rng: random.Random) -> str:
    return arithmetic_sentence(*random_arithmetic(rng))


def _counting(rng: random.Random) -> str:
    length = rng.randint(3, 5)
    start = rng.randint(0, MAX_NUMBER - length + 1)
    run = ", ".join(number_word(i) for i in range(start, start + length))
    return f"{rng.choice(NAMES)} counts {run}."


def _description(rng: random.Random) -> str:
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)} is {rng.choice(ADJECTIVES)}."


SENTENCE_KINDS = (_action, _possession, _arithmetic, _counting, _description)


def random_sentence(rng: random.Random) -> str:
    return rng.choice(SENTENCE_KINDS)(rng)


def random_document(rng: random.Random) -> str:
    """1-5 sentences separated by single spaces."""
    return " ".join(random_sentence(rng) for _ in range(rng.randint(1, 5)))


# ----------------------------------------------------------------------------- dialogues

DIALOGUE_FRACTION = 0.125  # of documents; half of them in the R1-Zero format


def dialogue_prompt(a: int, op: str, b: int) -> str:
    """'user: what is two plus three? assistant:': R1-Zero's template in miniature."""
    return f"user: {arithmetic_question(a, op, b)} assistant:"


def r1_reply(a: int, op: str, b: int, answer: int) -> str:
    """'<think> two plus three is five. </think> <answer> five </answer>'."""
    sentence = arithmetic_sentence(a, op, b, answer)
    return f"<think> {sentence} </think> <answer> {number_word(answer)} </answer>"


def dialogue_document(rng: random.Random) -> str:
    """`dialogue_prompt` then, after a space, `r1_reply` or (half the time) the bare
    `arithmetic_sentence`; always correct."""
    a, op, b, answer = random_arithmetic(rng)
    if rng.random() < 0.5:
        reply = r1_reply(a, op, b, answer)
    else:
        reply = arithmetic_sentence(a, op, b, answer)
    return f"{dialogue_prompt(a, op, b)} {reply}"


# ----------------------------------------------------------------------------- files


def generate(n: int, *, seed: int, split: str) -> list[str]:
    """`n` documents; the split name is part of the seed, so train and eval differ."""
    rng = random.Random(f"tiny_corpus:{seed}:{split}")
    # Dialogues have their own stream, and every position still draws its plain document
    # (dropped where a dialogue takes its place), so the other documents stay where and
    # what they were before dialogues existed.
    dialogue_rng = random.Random(f"tiny_corpus:{seed}:{split}:dialogue")
    documents = []
    for _ in range(n):
        document = random_document(rng)
        if dialogue_rng.random() < DIALOGUE_FRACTION:
            document = dialogue_document(dialogue_rng)
        documents.append(document)
    return documents


def write_corpus(
    out_dir: str | Path, n_train: int = 4000, n_eval: int = 200, seed: int = 0
) -> dict[str, Path]:
    """Write `train.jsonl` and `eval.jsonl` under `out_dir`; returns {split: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        path = out / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for text in generate(n, seed=seed, split=split):
                f.write(json.dumps({"text": text}) + "\n")
        paths[split] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/tiny", help="output directory")
    parser.add_argument("--n_train", type=int, default=4000, help="training documents")
    parser.add_argument("--n_eval", type=int, default=200, help="evaluation documents")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_corpus(args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
    for split, path in paths.items():
        print(f"wrote {path} ({args.n_train if split == 'train' else args.n_eval} documents)")


if __name__ == "__main__":
    main()
