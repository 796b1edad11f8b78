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
from tiny_runs import checkpoint_steps, read_metrics, read_params, run_records, stage_config

from align_jax.data.records import encode_completion
from align_jax.data.tokenizer import Tokenizer
from align_jax.rollout import RewardError
from align_jax.training import loop
from align_jax.training.reward_model import RewardScorer

pytestmark = pytest.mark.slow


def grpo_config(chain, name="grpo/tiny.py", init_from=None, **overrides):
    # One rollout a step unless a test turns dynamic sampling on: fewer programs to run.
    defaults = {"log_every": 1, "eval_every": 0, "rewards.num_workers": 0,
                "optimizer.schedule": "constant", "objective.dynamic_sampling": False}  # fmt: skip
    return stage_config(
        name, chain.data, init_from=str(init_from or chain.sft), **{**defaults, **overrides}
    )


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
    """...and DAPO's overlong penalty adds to it: with the buffer the whole 4 new tokens, a
    completion of L tokens gets factor · (−L / 4) on top of its reward."""
    cfg = grpo_config(
        sft_run, total_steps=1, checkpoint_every=1,
        **{"data.batch_size": 2, "objective.num_generations": 2, "rollout.max_new_tokens": 4,
           "rewards.num_workers": 1, "rewards.timeout_s": 0.5, "rewards.timeout_reward": -0.25,
           "objective.overlong_buffer": 4, "objective.overlong_penalty_factor": 0.5},
    )  # fmt: skip
    cfg.rewards.functions = f"{reward_module}.slow"
    loop.train(cfg, str(tmp_path / "run"))
    (record,) = run_records(tmp_path / "run").values()
    assert record["reward_timeouts"] == 1.0
    assert record["reward/slow"] == -0.25
    assert record["completion_length"] > 0
    want = -0.25 - 0.5 * record["completion_length"] / 4
    assert record["reward"] == pytest.approx(want, abs=1e-6)


def test_grpo_raises_the_held_out_reward(sft_run, tmp_path):
    """GRPO from the SFT model against a programmatic reward it can move in a few steps, the
    built-in `length` penalty (0 at no characters, -1 at 60 and beyond): the held-out mean
    reward (4 samples of 16 held-out prompts, the same draws before and after) rises, and
    completions get shorter. Arithmetic accuracy moves more slowly (one fact per question;
    see configs/grpo/tiny.py)."""
    cfg = grpo_config(
        sft_run, total_steps=20, eval_every=20, eval_at_start=True, eval_steps=2,
        checkpoint_every=20,
        **{"optimizer.learning_rate": 1e-4, "data.batch_size": 8, "rewards.functions": "length",
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
        **{"rollout.log_samples_every": 3, "data.batch_size": 8},
    )  # fmt: skip
    loop.train(cfg, str(tmp_path / "run"))
    records = read_metrics(tmp_path / "run")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all("reward/r1_format" in r and "reward/answer_match" in r for r in train)
    evals = {r["step"]: r for r in records if "eval_reward" in r}
    assert sorted(evals) == [0, 3]  # the config evaluates the starting model too
    evaluation = evals[3]
    assert {"eval_pass_at_1", "eval_pass_at_4", "eval_reward/r1_format"} <= set(evaluation)
    samples = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    assert samples and all(set(s["rewards"]) == {"r1_format", "answer_match"} for s in samples)
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "3")


def test_a_reward_model_is_a_reward_scoring_the_policys_token_ids(sft_run, reward_run, tmp_path):
    """The session's reward model (configs/reward/tiny.py from the SFT model) as GRPO's
    reward: it scores the rollout rows' token ids on the mesh, and those scores are what the
    same reward model gives the same rows through `RewardScorer.score_rows`, and the text
    path gives canonically encoded text."""
    rm_dir = reward_run
    scorer = RewardScorer.load(str(rm_dir))
    rm = scorer.config
    tokenizer = Tokenizer.load(rm.data.tokenizer)
    # Token path == text path on rows encoded as the reward model was trained.
    prompts = ["what is two plus three? ", "what is ten minus four? "]
    completions = ["two plus three is five.", "ten minus four is nine."]
    rows = np.zeros((2, 32), np.int32)
    segments = np.zeros((2, 32), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids, _ = encode_completion(p, c, tokenizer, rm.data)
        rows[i, : len(ids)], segments[i, : len(ids)] = ids, 1
    np.testing.assert_allclose(
        scorer.score_rows(rows, segments), scorer.score(prompts, completions), rtol=1e-5
    )

    cfg = grpo_config(
        sft_run, total_steps=2, checkpoint_every=2, **{"data.batch_size": 4,
        "objective.num_generations": 2, "rewards.functions": "reward_model",
        "rewards.reward_model": str(rm_dir), "rollout.log_samples_every": 1,
        "rollout.log_samples": 4},
    )  # fmt: skip
    loop.train(cfg, str(tmp_path / "run"))
    records = run_records(tmp_path / "run")
    samples = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    logged = np.array([v for s in samples if s["step"] == 1 for v in s["rewards"]["reward_model"]])
    assert np.isfinite(logged).all() and logged.std() > 0
    assert records[1]["reward/reward_model"] == pytest.approx(logged.mean(), rel=1e-5)
    # Re-scored as text (bos + prompt + completion + eos): the same where the completion
    # ended with eos and re-encodes to the sampled tokens; close everywhere else.
    texts = [(s["prompt"], c) for s in samples if s["step"] == 1 for c in s["completions"]]
    rescored = scorer.score([p for p, _ in texts], [c for _, c in texts])
    assert np.mean(np.abs(rescored - logged) < 1e-4) >= 0.5


def test_grpo_with_lora_samples_the_adapted_policy_and_saves_only_adapters(sft_run, tmp_path):
    """LoRA over the SFT model: the sampler runs base ∪ adapters (the trainer's log-probs of
    the samples match the sampler's to float rounding at every step, after the adapters
    have moved), and the checkpoint holds the adapters only."""
    cfg = grpo_config(
        sft_run, total_steps=3, checkpoint_every=3,
        **{"data.batch_size": 4, "objective.num_generations": 2, "rollout.max_new_tokens": 8,
           "model.lora.rank": 4, "optimizer.learning_rate": 1e-2,
           "rewards.functions": "length", "rewards.length_target": 0},
    )  # fmt: skip
    loop.train(cfg, str(tmp_path / "run"))
    records = run_records(tmp_path / "run")
    assert sorted(records) == [1, 2, 3]
    assert all(r["mismatch/abs_logp_diff_max"] < 1e-4 for r in records.values())
    assert all(r["update_norm"] > 0 for r in records.values())
    names = jax.tree_util.tree_flatten_with_path(read_params(tmp_path / "run", 3))[0]
    assert names and all("lora" in jax.tree_util.keystr(path) for path, _ in names)


def test_reward_model_config_errors(sft_run, tmp_path):
    listed = grpo_config(sft_run, total_steps=1, **{"rewards.functions": "reward_model"})
    with pytest.raises(ValueError, match="set config.rewards.reward_model"):
        loop.train(listed, str(tmp_path / "a"))
    unlisted = grpo_config(sft_run, total_steps=1, **{"rewards.reward_model": str(sft_run.sft)})
    with pytest.raises(ValueError, match="does not list 'reward_model'"):
        loop.train(unlisted, str(tmp_path / "b"))
