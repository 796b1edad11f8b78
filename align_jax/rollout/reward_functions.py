"""The built-in reward functions, registered by name: `answer_match`, `r1_format`, `length`,
`math_equiv`. align_jax/rollout/rewards.py documents each one and the contract."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from align_jax.rollout.reward_registry import RewardError, register

EXTRACTIONS = ("last_number", "boxed", "answer_tag")


def completion_text(completion: Any) -> str:
    """A completion's text: the string itself, or the content of a message list's last one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of messages, got {completion!r}")


_LAST_NUMBER = re.compile(r"(?:(?<![\w.])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_RATIO = re.compile(r"[-+]?\d+/\d+")
_THOUSANDS = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?")


def extract_answer(text: str, extraction: str) -> str | None:
    """The final answer in `text` by `extraction` (one of `EXTRACTIONS`), or None."""
    if extraction == "last_number":
        numbers = _LAST_NUMBER.findall(text)
        return numbers[-1] if numbers else None
    if extraction == "boxed":
        for match in reversed(list(_BOXED.finditer(text))):
            depth, start = 1, match.end()
            for i in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[start:i].strip()
        return None
    if extraction == "answer_tag":
        contents = _ANSWER_TAG.findall(text)
        return contents[-1].strip() if contents else None
    raise ValueError(f"unknown answer extraction {extraction!r}; valid: {', '.join(EXTRACTIONS)}")


def as_number(text: str) -> Fraction | None:
    """`text` as an exact number (see `answer_match`), or None if it does not read as one."""
    text = text.strip().strip("$").strip().removesuffix(".")
    grouped = _THOUSANDS.fullmatch(text)
    if grouped:
        text = grouped[1] + grouped[2].replace(",", "") + (grouped[3] or "")
    if _DECIMAL.fullmatch(text) or _RATIO.fullmatch(text):
        try:
            return Fraction(text)
        except ZeroDivisionError:  # "1/0"
            return None
    return None


def answers_equal(predicted: str, answer: str) -> bool:
    """`answer_match`'s comparison: numerically when both read as numbers, else as text."""
    a, b = as_number(predicted), as_number(answer)
    if a is not None and b is not None:
        return a == b
    return " ".join(predicted.split()) == " ".join(answer.split())


@register("answer_match", extraction="answer_extraction")
def answer_match(prompts, completions, answer=None, *, extraction="last_number", **fields):
    """1.0 when the extracted final answer equals `answer`, 0.0 if not, None without one."""
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown answer extraction {extraction!r}; valid: {EXTRACTIONS}")
    if answer is None:
        raise ValueError("answer_match needs an 'answer' field in the prompts' records")
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        if expected is None:
            rewards.append(None)
            continue
        predicted = extract_answer(completion_text(completion), extraction)
        rewards.append(float(predicted is not None and answers_equal(predicted, str(expected))))
    return rewards


_TAG = r"</?(?:think|answer)>"
_UNTAGGED = rf"(?:(?!{_TAG}).)*"
_R1_FORMAT = re.compile(rf"\s*<think>{_UNTAGGED}</think>\s*<answer>{_UNTAGGED}</answer>\s*", re.S)


@register("r1_format")
def r1_format(prompts, completions, **fields):
    """1.0 for `<think>…</think><answer>…</answer>` (whitespace around), else 0.0."""
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = completion_text(completion)
        if isinstance(prompt, str) and prompt.rstrip().endswith("<think>"):
            text = "<think>" + text
        rewards.append(float(_R1_FORMAT.fullmatch(text) is not None))
    return rewards


@register("length", target_chars="length_target", limit_chars="length_limit")
def length_penalty(prompts, completions, *, target_chars=2000, limit_chars=4000, **fields):
    """0 up to `target_chars` characters, then linearly down to −1 at `limit_chars`."""
    if not 0 <= target_chars < limit_chars:
        raise ValueError(f"length needs 0 <= target < limit, got {target_chars}, {limit_chars}")
    rewards = []
    for completion in completions:
        over = len(completion_text(completion)) - target_chars
        rewards.append(-min(max(over, 0) / (limit_chars - target_chars), 1.0))
    return rewards


@register("math_equiv", requires=("math_verify", "align_jax[math]"))
def math_equiv(prompts, completions, answer=None, **fields):
    """`math-verify`'s equivalence of the completion's answer with `answer` (None if the
    answer does not parse)."""
    try:
        # Imported on use: an optional extra, and importing it (sympy) takes a second.
        import math_verify
    except ImportError:
        raise RewardError(
            "math_equiv needs the math-verify package: pip install align_jax[math]"
        ) from None
    if answer is None:
        raise ValueError("math_equiv needs an 'answer' field in the prompts' records")
    # math-verify bounds each parse and comparison with SIGALRM (5 s), which only the main
    # thread may use; elsewhere it runs unbounded and the pool's timeout is the only bound.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        gold = []
        if expected is not None:
            gold = math_verify.parse(
                str(expected), extraction_mode="first_match", parsing_timeout=limit
            )
        if not gold:
            rewards.append(None)
            continue
        predicted = math_verify.parse(completion_text(completion), parsing_timeout=limit)
        equal = bool(predicted) and math_verify.verify(gold, predicted, timeout_seconds=limit)
        rewards.append(float(equal))
    return rewards
