"""Reward functions: the built-ins against hand-written cases, None and weights against a hand
computation, the registry and dotted paths, one-line errors, and the worker pool (timeouts,
a raising function named with its prompt, a dying worker, a clean close)."""

import concurrent.futures
import importlib.util
import math
import multiprocessing
import re
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import combine_rewards
from align_jax.rollout import (
    REWARD_FUNCTIONS,
    RewardError,
    Rewards,
    TokenScorer,
    answer_match,
    length_penalty,
    math_equiv,
    r1_format,
    register,
    resolve,
    weighted_total,
)
from align_jax.rollout.rewards import (
    REWARD_OPTIONS,
    REWARD_REQUIRES,
    default_config,
    extract_answer,
)

USER_MODULE = textwrap.dedent(
    """
    import os
    import time

    def char_count(prompts, completions, **fields):
        return [len(c) for c in completions]

    def slow(prompts, completions, delay, **fields):
        time.sleep(max(delay))
        return [1.0] * len(completions)

    def fails_on_boom(prompts, completions, **fields):
        for c in completions:
            if "boom" in c:
                raise ValueError("cannot score " + c)
        return [0.5] * len(completions)

    def dies_on_die(prompts, completions, **fields):
        if any("die" in c for c in completions):
            os._exit(3)
        return [None] * len(completions)

    def batch_only(prompts, completions, **fields):
        if len(completions) > 1:
            raise RuntimeError("only alone")
        return [1.0]

    NOT_A_FUNCTION = 3
    """
)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """`rewards_user_mod`, a module importable by dotted path (here and in spawned workers)."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "rewards_user_mod.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    yield "rewards_user_mod"
    sys.path.remove(str(folder))
    sys.modules.pop("rewards_user_mod", None)


def config(**overrides):
    c = default_config()
    c.num_workers = 0
    c.update(overrides)
    return c


# ----------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    "text, extraction, expected",
    [
        ("so 3 apples and 1,000 pears.", "last_number", "1,000"),
        ("pages 3-5", "last_number", "5"),
        ("x = -5 or x = +2.50", "last_number", "+2.50"),
        ("x = -5.", "last_number", "-5"),
        ("list 1,2,3", "last_number", "3"),
        ("no digits here", "last_number", None),
        (r"first \boxed{1} then \boxed{\frac{1}{2}} end", "boxed", r"\frac{1}{2}"),
        (r"\boxed { 42 }", "boxed", "42"),
        (r"\boxed{7} and \boxed{12", "boxed", "7"),  # the last one is unbalanced
        (r"no box 42", "boxed", None),
        ("<answer> 7 </answer> then <answer>\n8\n</answer>", "answer_tag", "8"),
        ("<answer>7", "answer_tag", None),
    ],
)
def test_extract_answer(text, extraction, expected):
    assert extract_answer(text, extraction) == expected


def test_answer_match():
    completions = [
        "it is 19.0",  # 19.0 == 19
        "total: 1,000",  # thousands commas, int answer
        "half: 0.5",  # decimal vs fraction
        "it is 18",
        "nothing",  # no number: wrong, not "does not apply"
        "42",
        "1000",  # answer "1,000.0"
    ]
    answers = ["19", 1000, "1/2", "19", "3", None, "1,000.0"]
    got = answer_match([""] * 7, completions, answer=answers)
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0, None, 1.0]

    boxed = [r"\boxed{$19$}", r"\boxed{x+1}", r"\boxed{x + 1}", r"\boxed{ 2.50 }"]
    got = answer_match(
        [""] * 4, boxed, answer=["19", "x  + 1", " x  +\n1", "2.5"], extraction="boxed"
    )
    assert got == [1.0, 0.0, 1.0, 1.0]  # text compares collapse whitespace, never remove it

    tagged = ["<answer> New   York </answer>", "<answer>paris</answer>", "<answer>7.</answer>"]
    got = answer_match([""] * 3, tagged, answer=["New York", "Paris", "7"], extraction="answer_tag")
    assert got == [1.0, 0.0, 1.0]  # case-sensitive; a trailing period is dropped

    chat = [[{"role": "assistant", "content": "so 4"}]]  # TRL's conversational form
    assert answer_match([""], chat, answer=["4"]) == [1.0]
    with pytest.raises(ValueError, match="'answer' field"):
        answer_match(["p"], ["1"])
    with pytest.raises(ValueError, match="unknown answer extraction"):
        answer_match(["p"], ["1"], answer=["1"], extraction="first_number")


def test_r1_format():
    cases = [
        ("Assistant:", "<think>a b</think><answer>4</answer>", 1.0),
        ("Assistant:", "\n <think>\nreason\n</think>\n\n<answer>\n4\n</answer>\n", 1.0),
        ("Assistant:", "<think></think><answer></answer>", 1.0),
        ("Assistant:", "<think>a</think>so<answer>4</answer>", 0.0),  # text between
        ("Assistant:", "hi <think>a</think><answer>4</answer>", 0.0),  # text before
        ("Assistant:", "<think>a</think><answer>4</answer>.", 0.0),  # text after
        ("Assistant:", "<think>a</think>", 0.0),
        ("Assistant:", "<answer>4</answer><think>a</think>", 0.0),
        ("Assistant:", "<think>a<think>b</think><answer>4</answer>", 0.0),
        ("Assistant:", "<think>a</think><think>b</think><answer>4</answer>", 0.0),
        ("Assistant:", "<think>a</think><answer>4</answer><answer>5</answer>", 0.0),
        ("Assistant: <think>\n", "reason</think><answer>4</answer>", 1.0),  # prompt opened it
        ("Assistant: <think>\n", "<think>reason</think><answer>4</answer>", 0.0),
        ("Assistant:", "reason</think><answer>4</answer>", 0.0),
    ]
    prompts, completions, expected = zip(*cases, strict=True)
    assert r1_format(list(prompts), list(completions)) == list(expected)


def test_length_penalty():
    lengths = [0, 10, 11, 15, 19, 20, 30]
    got = length_penalty([""] * 7, ["x" * n for n in lengths], target_chars=10, limit_chars=20)
    np.testing.assert_allclose(got, [0.0, 0.0, -0.1, -0.5, -0.9, -1.0, -1.0])
    with pytest.raises(ValueError, match="0 <= target < limit"):
        length_penalty([""], ["x"], target_chars=20, limit_chars=20)


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="extra 'math'")
def test_math_equiv():
    completions = [
        r"so the answer is $\boxed{\frac{1}{2}}$",
        r"so the answer is $\boxed{\frac{1}{3}}$",
        r"we get $\boxed{2\sqrt{2}}$",
        r"anything",
        r"no answer",
    ]
    answers = ["0.5", "0.5", r"$\sqrt{8}$", "no math here at all", None]
    expected = [1.0, 0.0, 1.0, None, None]
    assert math_equiv([""] * 5, completions, answer=answers) == expected
    # Off the main thread math-verify cannot use its SIGALRM timeouts; it must still work.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_equiv, [""] * 5, completions, answer=answers).result() == expected


# ----------------------------------------------------------------------------- registry


def test_registry_and_resolve(user_module):
    assert {"answer_match", "r1_format", "length", "math_equiv"} <= set(REWARD_FUNCTIONS)
    assert resolve("length") is length_penalty
    assert resolve(f"{user_module}.char_count")(["p"], ["abc"]) == [3]
    assert resolve(f"{user_module}:char_count") is resolve(f"{user_module}.char_count")

    with pytest.raises(RewardError) as e:
        resolve("exact_match")
    assert str(e.value).startswith("unknown reward function 'exact_match'; registered: ")
    assert "answer_match, length, math_equiv, r1_format" in str(e.value)
    for spec, message in [
        ("no_such_pkg.mod.fn", "cannot import 'no_such_pkg.mod' (ModuleNotFoundError"),
        (f"{user_module}.missing", f"'{user_module}' has no 'missing'"),
        (f"{user_module}:NOT_A_FUNCTION", "is not callable (a int)"),
    ]:
        with pytest.raises(RewardError, match=re.escape(message)) as e:
            resolve(spec)
        assert "\n" not in str(e.value)

    @register("test_registry_constant")
    def constant(prompts, completions, **fields):
        return [2.0] * len(completions)

    register("test_registry_needs", requires=("no_such_module_xyz", "align_jax[xyz]"))(constant)
    try:
        with pytest.raises(RewardError) as e:
            resolve("test_registry_needs")
        assert str(e.value) == (
            "reward function 'test_registry_needs' needs no_such_module_xyz: "
            "pip install align_jax[xyz]"
        )
        assert resolve("test_registry_constant") is constant
        with pytest.raises(RewardError, match="'length' is taken by .*length_penalty"):
            register("length")(constant)
    finally:
        for name in ("test_registry_constant", "test_registry_needs"):
            REWARD_FUNCTIONS.pop(name)
            REWARD_OPTIONS.pop(name)
            REWARD_REQUIRES.pop(name, None)


# ----------------------------------------------------------------------------- Rewards


def test_none_weights_and_metrics():
    def half(prompts, completions, kind, **fields):
        return [0.5 if k == "math" else None for k in kind]

    def one_or_two(prompts, completions, **fields):
        return [1, True, 2.0, np.float32(0.25)]

    rewards = Rewards({"half": half, "count": one_or_two}, [2.0, -1.0], num_workers=0)
    kind = ["math", "code", "math", "code"]
    got, metrics = rewards(["a", "b", "c", "d"], ["w", "x", "y", "z"], {"kind": kind})
    expected = np.array([[0.5, 1.0], [np.nan, 1.0], [0.5, 2.0], [np.nan, 0.25]], np.float32)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    totals = [2 * 0.5 - 1.0, -1.0, 2 * 0.5 - 2.0, -0.25]  # None left out of the sum
    np.testing.assert_allclose(weighted_total(got, rewards.weights), totals)
    np.testing.assert_allclose(
        weighted_total(got, rewards.weights),
        combine_rewards(jnp.asarray(got), jnp.array([2, -1.0])),
    )
    assert metrics == {
        "reward/half": 0.5,  # over the two samples it applies to
        "reward/count": pytest.approx((1 + 1 + 2 + 0.25) / 4),
        "reward": pytest.approx(sum(totals) / 4),
        "reward_timeouts": 0.0,
    }
    none_at_all, metrics = Rewards({"half": half}, num_workers=0)(["a"], ["w"], {"kind": ["x"]})
    assert math.isnan(none_at_all[0, 0]) and math.isnan(metrics["reward/half"])
    assert metrics["reward"] == 0.0  # a sample no function applies to gets 0, as TRL


def test_from_config(user_module):
    c = config(
        functions=f"answer_match, r1_format,length,{user_module}:char_count",
        weights="1, 0.5, 2, 0.1",
        answer_extraction="answer_tag",
        length_target=5,
        length_limit=15,
    )
    rewards = Rewards.from_config(c)
    assert rewards.names == ("answer_match", "r1_format", "length", "char_count")
    completions = ["<think>hm</think><answer>12</answer>", "<answer>3</answer>"]
    got, metrics = rewards(["q1", "q2"], completions, {"answer": ["12", "4"]})
    # answer_tag extraction; length: 36 and 18 characters are both past the limit of 15.
    expected = [[1.0, 1.0, -1.0, 36.0], [0.0, 0.0, -1.0, 18.0]]
    np.testing.assert_allclose(got, expected)
    np.testing.assert_allclose(
        metrics["reward"], (1 + 0.5 - 2 + 3.6 + 0 + 0 - 2 + 1.8) / 2, rtol=1e-6
    )

    got, _ = Rewards.from_config(config(functions="length", length_target=10, length_limit=20))(
        ["q"], ["x" * 15]
    )
    np.testing.assert_allclose(got, [[-0.5]])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"functions": " , "}, "config.rewards.functions is empty"),
        ({"functions": "answer_match,exact"}, "unknown reward function 'exact'; registered: "),
        ({"functions": "length,length"}, "config.rewards.functions lists 'length' twice"),
        ({"weights": "1,2"}, "config.rewards.weights has 2 values for 1 functions"),
        ({"functions": "length,mod.fn", "weights": "1,2"}, "cannot import 'mod'"),
        ({"weights": "1;2"}, "config.rewards.weights='1;2': expected numbers"),
        ({"answer_extraction": "last"}, "config.rewards.answer_extraction='last'; expected one"),
        ({"length_target": 9, "length_limit": 9}, "expected 0 <= length_target < length_limit"),
        ({"timeout_s": -1.0}, "config.rewards.timeout_s=-1.0: expected >= 0"),
        ({"weights": "1,nan"}, "config.rewards.weights='1,nan': expected finite numbers"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(RewardError, match=re.escape(message)) as e:
        Rewards.from_config(config(**overrides))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "value, message",
    [
        ([1.0], "returned 1 values; expected a list of 2 rewards"),
        ({"a": 1.0, "b": 2.0}, "returned a dict; expected a list of 2 rewards"),
        ("10", "returned a str; expected"),
        (3.0, "returned a float; expected"),
        ([1.0, "1"], "returned '1' (str) for sample 1; expected"),
        ([[1.0], 2.0], "returned [1.0] (list) for sample 0"),
        ([1.0, math.inf], "returned inf (float) for sample 1"),
        (np.ones((2, 1)), "returned an array of shape (2, 1)"),
        (np.array(["a", "b"]), "returned 'a' (str) for sample 0"),
    ],
)
def test_bad_returns(value, message):
    rewards = Rewards({"bad": lambda prompts, completions, **f: value}, num_workers=0)
    with pytest.raises(RewardError, match=re.escape(f"reward function 'bad' {message}")) as e:
        rewards(["p", "q"], ["a", "b"])
    assert "\n" not in str(e.value)


def test_accepted_returns():
    rewards = Rewards(
        {
            "array": lambda prompts, completions, **f: np.array([0.5, np.nan]),
            "tuple": lambda prompts, completions, **f: (False, None),
            "jax": lambda prompts, completions, **f: jnp.array([1, 2], jnp.int32),
        },
        num_workers=0,
    )
    got, metrics = rewards(["p", "q"], ["a", "b"])
    np.testing.assert_array_equal(got, [[0.5, 0.0, 1.0], [np.nan, np.nan, 2.0]])  # NaN is None
    assert metrics["reward/array"] == 0.5 and metrics["reward"] == (1.5 + 2.0) / 2


def test_raising_function_names_its_prompt(user_module):
    rewards = Rewards.from_config(config(functions=f"length,{user_module}.fails_on_boom"))
    long_prompt = "Question   three:\n" + "x" * 500
    with pytest.raises(RewardError) as e:
        rewards(["one", "two", long_prompt, "four"], ["a", "b", "boom", "boom too"])
    message = str(e.value)
    assert message.startswith(
        "reward function 'fails_on_boom' raised ValueError: cannot score boom (at "
        "rewards_user_mod.py:"
    )
    assert "on prompt 'Question three: xxx" in message and "(sample 2 of the batch)" in message
    assert len(message) < 400 and "\n" not in message
    with pytest.raises(RewardError, match="'batch_only' raised RuntimeError: only alone .* on a"):
        Rewards.from_config(config(functions=f"{user_module}.batch_only"))(["p", "q"], ["a", "b"])
    with pytest.raises(RewardError, match="'prompts' has 1 values for 2 completions"):
        rewards(["one"], ["a", "b"])


def test_field_mismatch_and_token_scorer():
    def count_ids(prompts, completions, tokens, **fields):
        return tokens["mask"].sum(axis=1).astype(np.float32)

    c = config(functions="length,rm", weights="1,0.5", length_target=0, length_limit=4)
    rewards = Rewards.from_config(c, extra={"rm": TokenScorer(count_ids)})
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    got, metrics = rewards(["p", "q"], ["ab", "abcd"], tokens={"mask": mask})
    np.testing.assert_allclose(got, [[-0.5, 2.0], [-1.0, 3.0]])
    assert metrics["reward/rm"] == 2.5
    with pytest.raises(RewardError, match="reward 'rm' scores token ids: pass tokens="):
        rewards(["p"], ["ab"])
    with pytest.raises(RewardError, match="config.rewards.functions does not list 'rm'"):
        Rewards.from_config(config(functions="length"), extra={"rm": TokenScorer(count_ids)})
    with pytest.raises(RewardError, match="'answer' has 1 values for 2 completions"):
        rewards(["p", "q"], ["a", "b"], {"answer": ["1"]}, tokens={"mask": mask})


def test_unpicklable_function_needs_in_process():
    with pytest.raises(RewardError, match="'local' cannot be sent to a worker process"):
        Rewards({"local": lambda prompts, completions, **f: [1.0]}, num_workers=1)


# ----------------------------------------------------------------------------- the pool


def test_pool_timeouts_errors_and_close(user_module):
    before = set(multiprocessing.active_children())
    names = ["char_count", "slow", "fails_on_boom", "dies_on_die"]
    c = config(
        functions=",".join(["answer_match"] + [f"{user_module}.{n}" for n in names]),
        num_workers=2,
        timeout_s=5.0,
        timeout_reward=-0.5,
    )

    def batch(completions, delay=0.0):
        n = len(completions)
        fields = {"answer": ["4"] * n, "delay": [0.0] * (n - 1) + [delay]}
        return [f"q{i + 1}" for i in range(n)], completions, fields

    with Rewards.from_config(c) as rewards:
        got, metrics = rewards(*batch(["is 4", "is 5!"]))
        ok = [[1.0, 4.0, 1.0, 0.5, np.nan], [0.0, 5.0, 1.0, 0.5, np.nan]]
        np.testing.assert_array_equal(got, ok)
        assert metrics["reward_timeouts"] == 0.0

        start = time.monotonic()
        got, metrics = rewards(*batch(["is 4", "is 5!"], delay=120.0))
        assert time.monotonic() - start < 60  # abandoned, not waited for
        np.testing.assert_array_equal(got[:, 2], [-0.5, -0.5])  # timeout_reward
        np.testing.assert_array_equal(np.delete(got, 2, axis=1), np.delete(ok, 2, axis=1))
        assert metrics["reward_timeouts"] == 1.0 and metrics["reward/slow"] == -0.5

        got, metrics = rewards(*batch(["is 4", "is 5!"]))  # a fresh worker took its place
        np.testing.assert_array_equal(got, ok)
        assert metrics["reward_timeouts"] == 0.0

        with pytest.raises(RewardError) as e:
            rewards(*batch(["a", "b", "boom", "boom 2"]))
        assert str(e.value).startswith(
            "reward function 'fails_on_boom' raised ValueError: cannot score boom (at "
        )
        assert str(e.value).endswith("on prompt 'q3' (sample 2 of the batch)")
        with pytest.raises(RewardError) as e:
            rewards(*batch(["a", "die", "b"]))
        assert str(e.value) == (
            "reward function 'dies_on_die' killed its worker process (exit code 3) "
            "on prompt 'q2' (sample 1 of the batch)"
        )
        prompts, completions, fields = batch(["is 4", "is 5!"])
        with pytest.raises(RewardError) as e:
            rewards(prompts, completions, {**fields, "extra": [lambda: 0, lambda: 1]})
        assert str(e.value).startswith(
            "reward function 'answer_match' cannot be sent to a worker process: "
        )
        assert "\n" not in str(e.value)
        got, _ = rewards(*batch(["is 4", "is 5!"]))  # the pool goes on
        np.testing.assert_array_equal(got, ok)
    assert set(multiprocessing.active_children()) == before
