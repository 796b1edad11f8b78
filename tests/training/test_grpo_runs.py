"""GRPO runs end to end from the session's tiny pretrain -> SFT chain (`sft_run`,
tests/conftest.py): exact resume with several updates per rollout and dynamic sampling,
reward functions that raise or time out, the held-out reward rising, R1-Zero from the
pretrained model."""

import json
import os
import textwrap

import jax
import numpy as np
import pytest
from tiny_runs import checkpoint_steps, read_metrics, read_params, stage_config

from align_jax.rollout import RewardError
from align_jax.training import loop

pytestmark = pytest.mark.slow

# Metrics that measure this machine, not the run.
TIMING = ("time/", "tokens_per_sec", "model_tflops_per_sec", "mfu", "generated_tokens_per_sec")


def grpo_config(chain, name="grpo/tiny.py", init_from=None, **overrides):
    defaults = {"log_every": 1, "eval_every": 0, "rewards.num_workers": 0,
                "optimizer.schedule": "constant"}  # fmt: skip
    return stage_config(
        name, chain.data, init_from=str(init_from or chain.sft), **{**defaults, **overrides}
    )


def run_records(workdir) -> dict[int, dict]:
    """step -> the train record, timings left out."""
    return {
        r["step"]: {k: v for k, v in r.items() if not k.startswith(TIMING)}
        for r in read_metrics(workdir)
        if "loss" in r
    }


def test_resume_is_exact_with_several_updates_and_dynamic_sampling(sft_run, tmp_path):
    """Stopped at step 2 and resumed to 4, a run with μ = 2, two minibatches and DAPO's
    dynamic sampling logs what the uninterrupted 4-step run logs, every metric bit for bit
    (the prompt position, the sampling seeds of every round and the train state resume)."""
    kw = {
        "objective.num_generations": 4, "objective.num_iterations": 2,
        "objective.num_minibatches": 2, "objective.dynamic_sampling": True,
        "objective.max_sampling_rounds": 3, "data.batch_size": 4, "rollout.max_new_tokens": 12,
        "rollout.log_samples_every": 1, "checkpoint_every": 2,
    }  # fmt: skip
    loop.train(grpo_config(sft_run, total_steps=4, **kw), str(tmp_path / "whole"))
    loop.train(grpo_config(sft_run, total_steps=2, **kw), str(tmp_path / "parts"))
    loop.train(grpo_config(sft_run, total_steps=4, **kw), str(tmp_path / "parts"))
    whole, parts = run_records(tmp_path / "whole"), run_records(tmp_path / "parts")
    assert sorted(whole) == [1, 2, 3, 4]
    assert parts == whole
    # The run really resampled: some step needed more than one round, and groups were dropped.
    assert max(r["dynamic_sampling/rounds"] for r in whole.values()) > 1
    assert sum(r["dynamic_sampling/dropped_groups"] for r in whole.values()) > 0
    same = jax.tree.map(
        np.array_equal, read_params(tmp_path / "whole", 4), read_params(tmp_path / "parts", 4)
    )
    assert all(jax.tree.leaves(same))
    samples = [json.loads(line) for line in open(tmp_path / "parts" / "samples.jsonl")]
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3, 4, 4]  # none repeated on resume


@pytest.fixture()
def reward_module(tmp_path, monkeypatch):
    """A module of reward functions importable by dotted path in this process and in the
    reward workers (which inherit sys.path)."""
    (tmp_path / "test_rewards_mod.py").write_text(
        textwrap.dedent(
            """
            import time

            def sometimes_raises(prompts, completions, **fields):
                if any("seven" in p for p in prompts):
                    raise ZeroDivisionError("no sevens")
                return [1.0] * len(prompts)

            def slow(prompts, completions, **fields):
                time.sleep(5)
                return [1.0] * len(prompts)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "test_rewards_mod"


def test_a_reward_function_that_raises_stops_the_run_and_keeps_the_checkpoint(
    sft_run, tmp_path, reward_module
):
    workdir = str(tmp_path / "run")
    kw = {"data.batch_size": 4, "objective.num_generations": 2, "rollout.max_new_tokens": 8}
    loop.train(grpo_config(sft_run, total_steps=2, checkpoint_every=2, **kw), workdir)
    before = read_params(workdir, 2)
    cfg = grpo_config(sft_run, total_steps=40, checkpoint_every=40, **kw)
    cfg.rewards.functions = f"{reward_module}.sometimes_raises"
    with pytest.raises(RewardError) as e:
        loop.train(cfg, workdir)
    message = str(e.value)
    assert "\n" not in message
    assert "'sometimes_raises'" in message and "ZeroDivisionError: no sevens" in message
    assert "seven" in message.split("on prompt", 1)[1]  # names the prompt it fails on
    assert checkpoint_steps(workdir) == [2]
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, read_params(workdir, 2))))


def test_a_reward_call_that_times_out_gets_the_timeout_reward_and_is_counted(
    sft_run, tmp_path, reward_module
):
    cfg = grpo_config(
        sft_run, total_steps=1, checkpoint_every=1,
        **{"data.batch_size": 2, "objective.num_generations": 2, "rollout.max_new_tokens": 4,
           "rewards.num_workers": 1, "rewards.timeout_s": 0.5, "rewards.timeout_reward": -0.25},
    )  # fmt: skip
    cfg.rewards.functions = f"{reward_module}.slow"
    loop.train(cfg, str(tmp_path / "run"))
    (record,) = run_records(tmp_path / "run").values()
    assert record["reward_timeouts"] == 1.0
    assert record["reward"] == record["reward/slow"] == -0.25


def test_grpo_raises_the_held_out_reward(sft_run, tmp_path):
    """GRPO from the SFT model against a programmatic reward it can move in a few steps, the
    built-in `length` penalty (0 at no characters, -1 at 60 and beyond): the held-out mean
    reward (4 samples of 16 held-out prompts, the same draws before and after) rises, and
    completions get shorter. Arithmetic accuracy moves more slowly (one fact per question;
    see configs/grpo/tiny.py)."""
    cfg = grpo_config(
        sft_run, total_steps=20, eval_every=20, eval_at_start=True, eval_steps=2,
        checkpoint_every=20,
        **{"optimizer.learning_rate": 1e-4, "rewards.functions": "length",
           "rewards.length_target": 0, "rewards.length_limit": 60},
    )  # fmt: skip
    loop.train(cfg, str(tmp_path / "run"))
    evals = {r["step"]: r for r in read_metrics(tmp_path / "run") if "eval_reward" in r}
    before, after = evals[0], evals[20]
    print(f"held-out reward {before['eval_reward']:.3f} -> {after['eval_reward']:.3f}")
    assert after["eval_reward"] > before["eval_reward"] + 0.05
    assert after["eval_completion_length"] < before["eval_completion_length"]


def test_r1_zero_from_the_pretrained_model(sft_run, tmp_path):
    """configs/grpo/r1_zero_tiny.py straight from the pretrained model: both rewards are
    computed on every step, samples are logged with them, and the eval reports pass@k."""
    cfg = grpo_config(
        sft_run, "grpo/r1_zero_tiny.py", init_from=sft_run.pretrain, total_steps=3,
        eval_every=3, eval_steps=1, checkpoint_every=3,
        **{"rollout.log_samples_every": 3},
    )  # fmt: skip
    loop.train(cfg, str(tmp_path / "run"))
    records = read_metrics(tmp_path / "run")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all("reward/r1_format" in r and "reward/answer_match" in r for r in train)
    (evaluation,) = [r for r in records if "eval_reward" in r]
    assert {"eval_pass_at_1", "eval_pass_at_4", "eval_reward/r1_format"} <= set(evaluation)
    samples = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    assert samples and all(set(s["rewards"]) == {"r1_format", "answer_match"} for s in samples)
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "3")
