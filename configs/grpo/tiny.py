"""Tiny GRPO on arithmetic questions with a verifiable answer, from the tiny SFT run.

    python experiments/tiny_tasks.py --out data/tiny       # rl_*.jsonl prompts
    python -m align_jax.train --config=configs/grpo/tiny.py --workdir=runs/grpo_tiny \
        --config.init_from=runs/sft_tiny

Prompts are the SFT questions ("what is two plus three? "); the SFT model answers with a
sentence ("two plus three is five."), and the reward is 1 when its final number word is
the right answer (`tiny_corpus.answer_reward`, a user function named by dotted path;
configs/__init__.py puts experiments/ on the path). 8 completions per prompt, group-scaled
advantages, DAPO's token-level loss and dynamic sampling (groups that all got the same
reward teach nothing and are replaced, up to 4 rollouts a step), no reference model
(beta = 0).
`--config.objective.loss_type=grpo`, `advantage_estimator=rloo`, `policy_loss=cispo`, ...
swap the variant with no other change. `:data_dir` picks another data folder.

Measured from configs/sft/tiny.py's model on 2 CPU cores (held-out accuracy over 100
questions × 4 samples, the same draws each time): 0.69 at the start, 0.735 after 75 steps,
0.76 after 150 (~3 min); pass@4 0.84. Without dynamic sampling the same 150 steps reached
0.725. Each question is one arithmetic fact, and RL moves facts one at a time.
"""

from align_jax.config import model_config
from align_jax.objectives import config_for
from configs import data_files


def get_config(arg: str | None = None):
    c = config_for("grpo")
    c.objective.update(num_generations=8, loss_type="dapo", scale_rewards="group",
                       dynamic_sampling=True, max_sampling_rounds=4)  # fmt: skip
    c.update(total_steps=150, log_every=10, eval_every=75, checkpoint_every=75, eval_at_start=True)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.0)
    c.data.update(batch_size=16, max_prompt_len=16, **data_files(arg, "rl_"))
    c.rollout.update(max_new_tokens=16, temperature=1.0, eval_num_samples=4,
                     log_samples_every=10)  # fmt: skip
    c.rewards.update(functions="tiny_corpus.answer_reward", num_workers=1, timeout_s=30.0)
    return c
