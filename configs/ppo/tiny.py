"""Tiny PPO (RLHF) against the tiny reward model, from the tiny SFT run.

    python experiments/tiny_tasks.py --out data/tiny       # rl_*.jsonl prompts
    python -m align_jax.train --config=configs/ppo/tiny.py --workdir=runs/ppo_tiny \
        --config.init_from=runs/sft_tiny --config.rewards.reward_model=runs/reward_tiny

The classic recipe: one completion per prompt, the reward model's score at the last token
and a k1 KL penalty to the SFT model at every token, GAE (γ 1, λ 0.95), whitened
advantages, 2 epochs × 2 minibatches of clipped policy and value updates per rollout. The
value model starts from the reward model (its score head restored); the reference is the
SFT model. `--config.objective.adaptive_kl=True` turns on the adaptive controller;
`--config.rewards.functions=tiny_corpus.answer_reward` (and no reward model) runs PPO
against the verifiable reward instead. `:data_dir` picks another data folder.

Measured from the tests' tiny SFT and reward models (tests/conftest.py's chain) on 2 CPU
cores: the reward model's held-out score (100 prompts × 4 samples, the same draws each
time) 2.40 at the start, 2.92 after 30 steps, 2.98 after 60 (~1.5 min); the KL to the SFT
model per completion at most ~1 nat, explained variance up to 0.55 by step 50.
"""

from align_jax.config import model_config
from align_jax.objectives import config_for
from configs import data_files


def get_config(arg: str | None = None):
    c = config_for("ppo")
    c.objective.update(num_generations=1, kl_coef=0.05, kl_estimator="k1", ppo_epochs=2,
                       num_minibatches=2, vf_coef=0.1, value_learning_rate=3e-4)  # fmt: skip
    c.update(total_steps=60, log_every=10, eval_every=30, checkpoint_every=30, eval_at_start=True)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=5e-5, schedule="constant", warmup_steps=0, weight_decay=0.0)
    c.data.update(batch_size=32, max_prompt_len=16, **data_files(arg, "rl_"))
    c.rollout.update(max_new_tokens=16, temperature=1.0, eval_num_samples=4,
                     log_samples_every=10)  # fmt: skip
    c.rewards.update(functions="reward_model", num_workers=0)
    return c
