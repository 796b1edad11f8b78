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

The registry lives in `align_jax.rollout.reward_registry`, the built-ins in
`align_jax.rollout.reward_functions`; this module re-exports both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from align_jax.rollout.reward_functions import (
    EXTRACTIONS,
    answer_match,
    answers_equal,
    as_number,
    completion_text,
    extract_answer,
    length_penalty,
    math_equiv,
    r1_format,
)
from align_jax.rollout.reward_pool import Call, InProcess, PoolError, WorkerPool
from align_jax.rollout.reward_registry import (
    REWARD_FUNCTIONS,
    REWARD_OPTIONS,
    REWARD_REQUIRES,
    RewardError,
    register,
    resolve,
)

__all__ = [
    "EXTRACTIONS", "REWARD_FUNCTIONS", "REWARD_OPTIONS", "REWARD_REQUIRES", "RewardError",
    "Rewards", "TokenScorer", "answer_match", "answers_equal", "as_number", "completion_text",
    "default_config", "extract_answer", "length_penalty", "math_equiv", "r1_format", "register",
    "resolve", "weighted_total",
]  # fmt: skip


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
            # Comma list of reward functions: registered names (answer_match, r1_format,
            # length, math_equiv, reward_model) or dotted paths `package.module.fn`.
            "functions": "answer_match",
            "weights": "",  # comma list, one weight per function; "" = all 1
            "answer_extraction": "last_number",  # answer_match: last_number | boxed | answer_tag
            "length_target": 2000,  # length: characters allowed before the penalty starts
            "length_limit": 4000,  # length: characters at which the penalty reaches −1
            "timeout_s": 60.0,  # seconds per call of a function in a worker; 0: no limit
            "timeout_reward": 0.0,  # every sample's reward from a call that timed out
            "num_workers": 2,  # worker processes for Python functions; 0: in this process
            # A trained reward model's run, listed in `functions` as "reward_model" (online RL
            # loads it on the mesh: align_jax/training/reward_model.py); "" for none.
            "reward_model": "",
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
