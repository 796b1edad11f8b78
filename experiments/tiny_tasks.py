"""Tiny SFT and preference tasks on the synthetic corpus's language (experiments/tiny_corpus.py).

- SFT (`sft_train.jsonl`, `sft_eval.jsonl`): "what is two plus three?" -> "two plus three is
  five." Half the records are `prompt`/`completion`, half `messages` chats, so both
  encodings are exercised.
- Pairs (`pairs_train.jsonl`, `pairs_eval.jsonl`): prompt = a question, chosen = the correct
  sentence, rejected = the same words in a shuffled order. A reward model on an SFT
  backbone tells them apart almost perfectly; later stages use harder rejections.
- Lists (`lists_train.jsonl`, `lists_eval.jsonl`): prompt = a question, 2 to 4 `responses`
  in random order with `scores`: the correct sentence (1.0), the same sentence with a wrong
  answer (0.5), its words shuffled (0.0), and sometimes the wrong one shuffled (-0.5).
- Unpaired (`unpaired_train.jsonl`, `unpaired_eval.jsonl`): prompt = a question, completion
  = the correct sentence (`label` true, half the records) or a shuffled or wrong-answer one.
- RL prompts (`rl_train.jsonl`, `rl_eval.jsonl`): prompt = a question phrased as the SFT
  `prompt` records phrase it ("what is two plus three? "), `answer` = the correct number word
  ("five"), which `tiny_corpus.answer_reward` checks (an SFT model answers "two plus three is
  five.").
- The demo's task (experiments/demo.py): demonstrations from a careless demonstrator and
  preference labels from a careful labeller.
  - `demo_sft_{train,eval}.jsonl`: SFT records whose answer is, `DEMO_SFT_ERROR_RATE` of the
    time, a number copied from the question ("two plus three is three."), a systematic
    error an SFT model learns along with the rest.
  - `gold_pairs_{train,eval}.jsonl`: pairs of answer sentences, one right and one wrong:
    the demonstrator's copied number (`GOLD_PAIR_COPY_RATE` of the pairs), else a near
    miss within three of the answer. The labeller prefers the one the gold reward
    (`tiny_corpus.answer_reward`) scores higher; `GOLD_LABEL_NOISE` of the labels are
    flipped. A reward model learns the copies quickly and the near misses hardly at all:
    it is a proxy for the gold reward, not the gold reward itself.
- R1-Zero prompts (`r1_train.jsonl`, `r1_eval.jsonl`): prompt = the pretraining dialogues'
  prefix ("user: what is two plus three? assistant:", `tiny_corpus.dialogue_prompt`),
  `answer` as above: RL straight from the pretrained model, in the `<think>`/`<answer>`
  format some of the corpus's dialogues show.

Every kind and split has its own seed (`tiny_tasks:<seed>:<kind>:<split>`), so train and
eval differ and each file is the same for the same seed.

    python experiments/tiny_tasks.py --out data/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import random

from tiny_corpus import (
    MAX_NUMBER,
    answer_reward,
    arithmetic_question,
    arithmetic_sentence,
    dialogue_prompt,
    number_word,
    random_arithmetic,
)


def sft_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    question, reply = arithmetic_question(a, op, b), arithmetic_sentence(a, op, b, answer)
    if rng.random() < 0.5:
        return {"prompt": question + " ", "completion": reply}
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    }


def pair_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    chosen = arithmetic_sentence(a, op, b, answer)
    words = chosen.rstrip(".").split()
    shuffled = words[:]
    while shuffled == words:
        rng.shuffle(shuffled)
    return {
        "prompt": arithmetic_question(a, op, b) + " ",
        "chosen": chosen,
        "rejected": " ".join(shuffled) + ".",
    }


def _shuffled(sentence: str, rng: random.Random) -> str:
    words = sentence.rstrip(".").split()
    shuffled = words[:]
    while shuffled == words:
        rng.shuffle(shuffled)
    return " ".join(shuffled) + "."


def _wrong_answer(a: int, op: str, b: int, answer: int, rng: random.Random) -> str:
    wrong = rng.choice([n for n in range(MAX_NUMBER + 1) if n != answer])
    return arithmetic_sentence(a, op, b, wrong)


def list_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    wrong = _wrong_answer(a, op, b, answer, rng)
    candidates = [
        (arithmetic_sentence(a, op, b, answer), 1.0),
        (wrong, 0.5),
        (_shuffled(arithmetic_sentence(a, op, b, answer), rng), 0.0),
        (_shuffled(wrong, rng), -0.5),
    ]
    k = rng.choice((2, 3, 3, 4))
    chosen = [candidates[0]] + rng.sample(candidates[1:], k - 1)
    rng.shuffle(chosen)
    return {
        "prompt": arithmetic_question(a, op, b) + " ",
        "responses": [text for text, _ in chosen],
        "scores": [score for _, score in chosen],
    }


def unpaired_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    good = rng.random() < 0.5
    if good:
        completion = arithmetic_sentence(a, op, b, answer)
    elif rng.random() < 0.5:
        completion = _shuffled(arithmetic_sentence(a, op, b, answer), rng)
    else:
        completion = _wrong_answer(a, op, b, answer, rng)
    return {"prompt": arithmetic_question(a, op, b) + " ", "completion": completion, "label": good}


DEMO_SFT_ERROR_RATE = 0.3  # demonstrations answering with a number copied from the question
GOLD_PAIR_COPY_RATE = 0.7  # gold pairs whose wrong answer is a copied number (else a near miss)
GOLD_LABEL_NOISE = 0.1  # gold pairs whose preference is flipped


def _copied(a: int, b: int, answer: int, rng: random.Random) -> int | None:
    """A number of the question that is not its answer (the demonstrator's slip), or None."""
    wrong = [n for n in {a, b} if n != answer]
    return rng.choice(sorted(wrong)) if wrong else None


def _near_miss(answer: int, rng: random.Random) -> int:
    """A wrong answer within three of the right one."""
    return rng.choice(
        [n for n in range(answer - 3, answer + 4) if n != answer and 0 <= n <= MAX_NUMBER]
    )


def demo_sft_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    copied = _copied(a, b, answer, rng)
    if copied is not None and rng.random() < DEMO_SFT_ERROR_RATE:
        answer = copied
    return {
        "prompt": arithmetic_question(a, op, b) + " ",
        "completion": arithmetic_sentence(a, op, b, answer),
    }


def gold_pair_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    copied = _copied(a, b, answer, rng)
    wrong = copied if copied is not None and rng.random() < GOLD_PAIR_COPY_RATE else None
    wrong = _near_miss(answer, rng) if wrong is None else wrong
    question = arithmetic_question(a, op, b) + " "
    first, second = arithmetic_sentence(a, op, b, answer), arithmetic_sentence(a, op, b, wrong)
    gold = answer_reward([question] * 2, [first, second], [number_word(answer)] * 2)
    chosen, rejected = (first, second) if gold[0] > gold[1] else (second, first)
    if rng.random() < GOLD_LABEL_NOISE:
        chosen, rejected = rejected, chosen
    return {"prompt": question, "chosen": chosen, "rejected": rejected}


def rl_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    return {"prompt": arithmetic_question(a, op, b) + " ", "answer": number_word(answer)}


def r1_record(rng: random.Random) -> dict:
    a, op, b, answer = random_arithmetic(rng)
    return {"prompt": dialogue_prompt(a, op, b), "answer": number_word(answer)}


def write_tasks(out_dir, *, n_train: int = 2000, n_eval: int = 200, seed: int = 0) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    kinds = (
        ("sft", sft_record),
        ("pairs", pair_record),
        ("demo_sft", demo_sft_record),
        ("gold_pairs", gold_pair_record),
        ("lists", list_record),
        ("unpaired", unpaired_record),
        ("rl", rl_record),
        ("r1", r1_record),
    )
    for kind, make in kinds:
        for split, n in (("train", n_train), ("eval", n_eval)):
            rng = random.Random(f"tiny_tasks:{seed}:{kind}:{split}")
            path = os.path.join(out_dir, f"{kind}_{split}.jsonl")
            with open(path, "w") as f:
                for _ in range(n):
                    f.write(json.dumps(make(rng)) + "\n")
            paths[f"{kind}_{split}"] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/tiny")
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in write_tasks(
        args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed
    ).items():
        print(f"wrote {path} ({name})")


if __name__ == "__main__":
    main()
