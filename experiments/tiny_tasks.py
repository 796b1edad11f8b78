"""Tiny SFT and preference tasks on the synthetic corpus's language (experiments/tiny_corpus.py).

- SFT (`sft_train.jsonl`, `sft_eval.jsonl`): "what is two plus three?" -> "two plus three is
  five." Half the records are `prompt`/`completion`, half `messages` chats, so both
  encodings are exercised.
- Pairs (`pairs_train.jsonl`, `pairs_eval.jsonl`): prompt = a question, chosen = the correct
  sentence, rejected = the same words in a shuffled order. A reward model on an SFT
  backbone tells them apart almost perfectly; later stages use harder rejections.

    python experiments/tiny_tasks.py --out data/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import random

from tiny_corpus import arithmetic_question, arithmetic_sentence, random_arithmetic


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


def write_tasks(out_dir, *, n_train: int = 2000, n_eval: int = 200, seed: int = 0) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for kind, make in (("sft", sft_record), ("pairs", pair_record)):
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
