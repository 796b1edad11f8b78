"""Reward functions for online RL: a registry, the built-ins, and `Rewards`, which scores a
batch with several of them and combines them with weights.

A reward function is `fn(prompts, completions, **fields) -> list[float | None]` over a batch,
TRL's convention: `prompts[i]` and `completions[i]` are one sample (a prompt repeats once per
completion of its group), `completions` are the decoded texts without the EOS token, and each
extra field of the prompts' records (`answer`, `tests`, ...) comes as a keyword with one value
per sample. A function should take `**kwargs` for the fields it does not use. It returns one
reward per sample: a number (bool and int count as 0/1 and themselves), or None (or NaN) where
it does not apply to that sample, e.g. a math reward on a coding prompt. The built-ins read
TRL's conversational form too: a completion that is a list of messages counts as the content
of its last one.

Weights. With F functions, `R_i = Σ_k w_k r_ik`, a None reward left out of the sum (TRL's
`nansum`; `align_jax.losses.combine_rewards` on arrays, `weighted_total` here in numpy). A
sample where no function applies gets R = 0, as in TRL. verl has one `compute_score` per
data source that must return a number for every sample; OpenRLHF one custom `reward_func` per
run; several weighted functions with None are TRL's.

Registry. `register(name)` adds a function to `REWARD_FUNCTIONS`; `resolve(spec)` takes a
registered name or a dotted path `package.module.fn` (or `package.module:fn`) to any function
importable here. Built-ins (their options come from the config, see `default_config`):
- `answer_match`: 1.0 when the final answer extracted from the completion equals the sample's
  `answer` field, else 0.0 (also when nothing could be extracted); None when the answer is
  None. Extraction (`answer_extraction`): `last_number` (the last decimal number: optional
  sign, digits with optional thousands commas, optional decimals; "3-5" yields 5, "3/4" yields
  4), `boxed` (the content of the last `\\boxed{...}`, braces balanced) or `answer_tag` (the
  content of the last `<answer>...</answer>`). Both sides are compared as numbers when both
  read as one after stripping whitespace, `$` and one trailing period: decimals, `1e3`,
  fractions `a/b`, thousands commas ("1,000" = "1000", "19.0" = "19", "0.5" = "1/2"), exactly
  (as fractions, no float rounding). Otherwise as text, with whitespace collapsed,
  case-sensitive. LaTeX equivalence is `math_equiv`'s.
- `r1_format`: DeepSeek-R1-Zero's format reward (arXiv 2501.12948): 1.0 when the completion is
  `<think>…</think>` then `<answer>…</answer>`, with only whitespace between and around and no
  other such tag inside, else 0.0. R1-Zero's template ends the prompt at "Assistant:", so the
  completion holds both tags; when the prompt itself ends with `<think>` (templates of
  R1-distilled and Qwen3 models open it), the completion is checked as if it began with it.
- `length`: a soft length penalty in characters, 0 up to `length_target`, falling linearly to
  −1 at `length_limit` and staying there (DAPO's overlong shaping, arXiv 2503.14476, counted
  in characters rather than tokens).
- `math_equiv`: `math-verify`'s equivalence of the completion's final answer with `answer`
  (LaTeX, sets, intervals, units), as TRL's `accuracy_reward`: None when the answer does not
  parse, else 1.0 or 0.0. The completion is read with math-verify's default extraction
  (LaTeX and plain expressions). Needs the optional extra: `pip install align_jax[math]`.

`Rewards.from_config(config)` builds the reward of a run (`default_config()` lists the keys);
`Rewards({name: fn, ...}, weights)` builds one from Python. `rewards(prompts, completions,
fields)` returns `(rewards_bf, metrics)`: float32 [B, F] in `rewards.names` order with NaN for
None, and the metrics `reward/<name>` (each function's mean over the samples it applies to;
NaN if none), `reward` (the mean weighted total) and `reward_timeouts` (calls that timed out
in this batch). `weighted_total(rewards_bf, rewards.weights)` gives the [B] totals.

Running. Python functions run in a small pool of spawned processes (`num_workers`, at most
one per function; `align_jax.rollout.reward_pool` says why spawn), one call per function over
the whole batch, each limited to `timeout_s`; a call that times out gives `timeout_reward` to
every sample and is counted. `num_workers=0` runs them in this process, without timeouts. A
function that raises, or returns anything but one number or None per sample, stops the run
with a one-line `RewardError` (a ValueError, which `align_jax.train` prints without a
traceback) before anything is updated, so the last checkpoint stays as it was; one that
raises is first re-run sample by sample, in the pool, to name the prompt it fails on. Close a
`Rewards` (`close()` or `with`) to stop its workers.

A `TokenScorer` (a reward model on the mesh) sits beside the Python functions: it runs in this
process and is called with the same arguments plus `tokens=`, whatever the caller passes as
`rewards(..., tokens=...)` (token ids, masks), and returns a number or NaN per sample. A
config lists it by the name it is given in `Rewards.from_config(config, extra={name: ...})`.

The module is longer than most (~550 lines): the registry, the built-ins whose options the
config binds, and `Rewards` read as one contract.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import math
import pickle
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import ml_collections
import numpy as np

from align_jax.rollout.reward_pool import Call, InProcess, PoolError, WorkerPool


class RewardError(ValueError):
    """A reward function or its config is unusable; the message (one line) says which and why."""


REWARD_FUNCTIONS: dict[str, Callable[..., Sequence[float | None]]] = {}
REWARD_OPTIONS: dict[str, dict[str, str]] = {}  # name -> {keyword: config key}
REWARD_REQUIRES: dict[str, tuple[str, str]] = {}  # name -> (module, what installs it)
EXTRACTIONS = ("last_number", "boxed", "answer_tag")


def register(name: str, *, requires: tuple[str, str] | None = None, **config_keys: str):
    """Decorator adding a reward function to `REWARD_FUNCTIONS` under `name`. `config_keys`
    maps keywords of the function to keys of the rewards config that `Rewards.from_config`
    passes to it, e.g. `register("answer_match", extraction="answer_extraction")`;
    `requires=(module, install)` makes `resolve` check that an optional module is there."""

    def add(fn):
        old = REWARD_FUNCTIONS.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (
            fn.__module__,
            fn.__qualname__,
        )
        if old is not None and not same:  # the same function re-imported is no conflict
            raise RewardError(
                f"reward function name {name!r} is taken by {old.__module__}.{old.__qualname__}"
            )
        REWARD_FUNCTIONS[name] = fn
        REWARD_OPTIONS[name] = dict(config_keys)
        if requires:
            REWARD_REQUIRES[name] = requires
        return fn

    return add


def resolve(spec: str) -> Callable[..., Any]:
    """A registered reward function's name, or a dotted path `package.module.fn` or
    `package.module:fn`, to the function; RewardError (one line) if there is none."""
    spec = spec.strip()
    if spec in REWARD_FUNCTIONS:
        module, install = REWARD_REQUIRES.get(spec, ("", ""))
        if module and importlib.util.find_spec(module) is None:
            raise RewardError(f"reward function {spec!r} needs {module}: pip install {install}")
        return REWARD_FUNCTIONS[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    elif "." in spec:
        module_name, _, attr = spec.rpartition(".")
    else:
        raise RewardError(
            f"unknown reward function {spec!r}; registered: {', '.join(sorted(REWARD_FUNCTIONS))}"
            " (or a dotted path package.module.fn)"
        )
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:
        raise RewardError(
            f"reward function {spec!r}: cannot import {module_name!r} "
            f"({type(e).__name__}: {' '.join(str(e).split())})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward function {spec!r}: {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward function {spec!r} is not callable (a {type(obj).__name__})")
    return obj


# ----------------------------------------------------------------------------- built-ins


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


# ----------------------------------------------------------------------------- Rewards


@dataclasses.dataclass(frozen=True)
class TokenScorer:
    """A reward computed in this process from token ids (a reward model on the mesh):
    `fn(prompts, completions, tokens=..., **fields)` returns a number or NaN per sample."""

    fn: Callable[..., Any]


def default_config() -> ml_collections.ConfigDict:
    """The rewards config: `functions` (comma-separated registered names or dotted paths),
    `weights` (comma-separated, one per function; "" for all 1), the built-ins' options, the
    pool (`num_workers`, 0 for none; `timeout_s` per call, 0 for none) and `timeout_reward`."""
    return ml_collections.ConfigDict(
        {
            "functions": "answer_match",
            "weights": "",
            "answer_extraction": "last_number",
            "length_target": 2000,
            "length_limit": 4000,
            "timeout_s": 60.0,
            "timeout_reward": 0.0,
            "num_workers": 2,
        }
    )


def weighted_total(rewards_bf: np.ndarray, weights_f: Sequence[float]) -> np.ndarray:
    """`R_i = Σ_k w_k r_ik`, NaN rewards skipped: `align_jax.losses.combine_rewards` in numpy."""
    rewards_bf = np.asarray(rewards_bf, np.float32)
    weighted = rewards_bf * np.asarray(weights_f, np.float32)[None, :]
    return np.sum(np.where(np.isnan(rewards_bf), np.float32(0), weighted), axis=1)


class Rewards:
    """Scores batches with named reward functions (and `TokenScorer`s) and weights."""

    def __init__(
        self,
        functions: Mapping[str, Callable[..., Any] | TokenScorer],
        weights: Sequence[float] | None = None,
        *,
        timeout_s: float = 60.0,
        timeout_reward: float = 0.0,
        num_workers: int = 2,
    ):
        if not functions:
            raise RewardError("Rewards needs at least one reward function")
        self.names = tuple(functions)
        self.weights = np.ones(len(self.names)) if weights is None else np.asarray(weights, float)
        if self.weights.shape != (len(self.names),) or not np.all(np.isfinite(self.weights)):
            raise RewardError(
                f"weights {weights} for {len(self.names)} functions: expected as "
                "many finite numbers"
            )
        if timeout_s < 0 or num_workers < 0:
            raise RewardError(f"timeout_s and num_workers must be >= 0: {timeout_s}, {num_workers}")
        self.timeout_s, self.timeout_reward = float(timeout_s), float(timeout_reward)
        self._functions = dict(functions)
        python = [n for n, fn in self._functions.items() if not isinstance(fn, TokenScorer)]
        if num_workers and python:
            for name in python:
                try:
                    pickle.dumps(self._functions[name])
                except Exception as e:
                    raise RewardError(
                        f"reward function {name!r} cannot be sent to a worker process "
                        f"({type(e).__name__}); define it at module level, or use num_workers=0"
                    ) from None
            self._runner = WorkerPool(min(num_workers, len(python)))
        else:
            self._runner = InProcess()

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        *,
        extra: Mapping[str, Callable[..., Any] | TokenScorer] | None = None,
        where: str = "config.rewards",
    ) -> Rewards:
        """Rewards from a `default_config()`-shaped config; `extra` names functions or
        `TokenScorer`s that `functions` may list besides the registry. Errors name the key
        as `where.key`."""
        extra = dict(extra or {})
        specs = _split(config.functions)
        if not specs:
            raise RewardError(f"{where}.functions is empty; expected names or dotted paths")
        if config.answer_extraction not in EXTRACTIONS:
            raise RewardError(
                f"{where}.answer_extraction={config.answer_extraction!r}; "
                f"expected one of {', '.join(EXTRACTIONS)}"
            )
        if not 0 <= config.length_target < config.length_limit:
            raise RewardError(
                f"{where}.length_target={config.length_target} and length_limit="
                f"{config.length_limit}: expected 0 <= length_target < length_limit"
            )
        for key in ("timeout_s", "num_workers"):
            if config[key] < 0:
                raise RewardError(f"{where}.{key}={config[key]}: expected >= 0")
        functions: dict[str, Callable[..., Any] | TokenScorer] = {}
        for spec in specs:
            if spec in extra:
                name, fn = spec, extra.pop(spec)
            else:
                fn = resolve(spec)
                name = spec if spec in REWARD_FUNCTIONS else re.split(r"[.:]", spec)[-1]
                options = {}
                for keyword, key in REWARD_OPTIONS.get(spec, {}).items():
                    if key not in config:
                        raise RewardError(f"{where}.{key} is missing; reward {spec!r} reads it")
                    options[keyword] = config[key]
                fn = functools.partial(fn, **options) if options else fn
            if name in functions:
                raise RewardError(f"{where}.functions lists {name!r} twice")
            functions[name] = fn
        if extra:
            raise RewardError(f"{where}.functions does not list {', '.join(map(repr, extra))}")
        weights = None
        if _split(config.weights):
            try:
                weights = [float(w) for w in _split(config.weights)]
            except ValueError:
                raise RewardError(f"{where}.weights={config.weights!r}: expected numbers") from None
            if not all(map(math.isfinite, weights)):
                raise RewardError(f"{where}.weights={config.weights!r}: expected finite numbers")
            if len(weights) != len(functions):
                raise RewardError(
                    f"{where}.weights has {len(weights)} values for {len(functions)} functions"
                )
        return cls(
            functions,
            weights,
            timeout_s=config.timeout_s,
            timeout_reward=config.timeout_reward,
            num_workers=config.num_workers,
        )

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        fields: Mapping[str, Sequence[Any]] | None = None,
        *,
        tokens: Any = None,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """`(rewards_bf, metrics)`: float32 [B, F] in `names` order, NaN where a function
        does not apply (or a `TokenScorer` gives NaN), and the batch's metrics."""
        prompts, completions = list(prompts), list(completions)
        fields = {k: list(v) for k, v in (fields or {}).items()}
        batch = len(completions)
        for key, values in [("prompts", prompts)] + list(fields.items()):
            if len(values) != batch:
                raise RewardError(f"{key!r} has {len(values)} values for {batch} completions")
        rewards = np.full((batch, len(self.names)), np.nan)
        python = [n for n in self.names if not isinstance(self._functions[n], TokenScorer)]
        calls = [Call(self._functions[n], (prompts, completions), fields) for n in python]
        try:
            outcomes = dict(zip(python, self._runner.run(calls, self.timeout_s), strict=True))
        except PoolError as e:
            raise RewardError(f"reward functions: {e}") from None
        timeouts = 0
        for f, name in enumerate(self.names):
            fn = self._functions[name]
            if isinstance(fn, TokenScorer):
                if tokens is None:
                    raise RewardError(f"reward {name!r} scores token ids: pass tokens=")
                values = fn.fn(prompts, completions, tokens=tokens, **fields)
                rewards[:, f] = _check_values(name, values, batch)
                continue
            outcome = outcomes[name]
            if outcome.kind == "ok":
                rewards[:, f] = _check_values(name, outcome.value, batch)
            elif outcome.kind == "timeout":
                rewards[:, f], timeouts = self.timeout_reward, timeouts + 1
            elif outcome.kind == "unloadable":
                raise RewardError(f"reward function {name!r} {outcome.error}")
            else:
                raise self._locate(name, outcome.error, prompts, completions, fields)
        rewards = rewards.astype(np.float32)
        total = weighted_total(rewards, self.weights)
        metrics = {f"reward/{n}": _nanmean(rewards[:, f]) for f, n in enumerate(self.names)}
        metrics["reward"] = _nanmean(total)
        metrics["reward_timeouts"] = float(timeouts)
        return rewards, metrics

    def _locate(self, name, error, prompts, completions, fields) -> RewardError:
        """The error of a function that raised on the batch, naming the first sample it raises
        on alone (the samples re-run a few at a time, in the pool, with the same timeout)."""
        fn, step = self._functions[name], self._runner.num_workers
        for start in range(0, len(completions), step):
            indices = range(start, min(start + step, len(completions)))
            calls = [
                Call(fn, ([prompts[i]], [completions[i]]), {k: [v[i]] for k, v in fields.items()})
                for i in indices
            ]
            for i, outcome in zip(indices, self._runner.run(calls, self.timeout_s), strict=True):
                if outcome.kind == "error":
                    return RewardError(
                        f"reward function {name!r} {outcome.error} on prompt "
                        f"{_shorten(prompts[i])} (sample {i} of the batch)"
                    )
        first = _shorten(prompts[0]) if prompts else "(none)"
        return RewardError(
            f"reward function {name!r} {error} on a batch of {len(completions)}, but on no "
            f"sample of it alone (its first prompt: {first})"
        )

    def close(self) -> None:
        """Stops the worker processes, if any (idempotent)."""
        self._runner.close()

    def __enter__(self) -> Rewards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _split(value: str | Sequence[str]) -> list[str]:
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [p.strip() for p in parts if p.strip()]


def _shorten(prompt: Any, limit: int = 200) -> str:
    text = " ".join(str(prompt).split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _nanmean(values: np.ndarray) -> float:
    applies = ~np.isnan(values)
    return float(np.mean(values[applies])) if applies.any() else math.nan


def _check_values(name: str, values: Any, batch: int) -> np.ndarray:
    """A function's return as float64 [batch], None as NaN; RewardError if it is not one
    number or None per sample."""
    expected = f"a list of {batch} rewards (numbers, or None where it does not apply)"
    if not isinstance(values, (list, tuple)) and hasattr(values, "__array__"):
        values = np.asarray(values)  # numpy, JAX and torch arrays
        if values.ndim != 1:
            raise RewardError(
                f"reward function {name!r} returned an array of shape {values.shape}; "
                f"expected {expected}"
            )
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(
            f"reward function {name!r} returned a {type(values).__name__}; expected {expected}"
        )
    if len(values) != batch:
        raise RewardError(
            f"reward function {name!r} returned {len(values)} values; expected {expected}"
        )
    out = np.empty(batch)
    for i, v in enumerate(values):
        number = isinstance(v, (bool, int, float, np.integer, np.floating, np.bool_))
        if (v is not None and not number) or (number and math.isinf(float(v))):
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:40] + "…"
            raise RewardError(
                f"reward function {name!r} returned {shown} "
                f"({type(v).__name__}) for sample {i}; expected {expected}"
            )
        out[i] = math.nan if v is None else float(v)
    return out
