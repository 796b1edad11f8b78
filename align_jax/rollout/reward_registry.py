"""The registry of reward functions: `register(name)` adds one, `resolve(spec)` finds a
registered name or a dotted path. align_jax/rollout/rewards.py documents the contract."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any


class RewardError(ValueError):
    """A reward function or its config is unusable; the message (one line) says which and why."""


REWARD_FUNCTIONS: dict[str, Callable[..., Sequence[float | None]]] = {}
REWARD_OPTIONS: dict[str, dict[str, str]] = {}  # name -> {keyword: config key}
REWARD_REQUIRES: dict[str, tuple[str, str]] = {}  # name -> (module, what installs it)


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
