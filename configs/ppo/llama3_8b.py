"""PPO (RLHF) of a Llama-3-8B-shaped SFT model against a reward model (planning config for
a TPU pod).

    python -m align_jax.train --distributed --config=configs/ppo/llama3_8b.py \
        --workdir=/mnt/shared/runs/ppo_8b --config.init_from=/mnt/shared/runs/sft_8b \
        --config.rewards.reward_model=/mnt/shared/runs/reward_8b \
        --config.data.train_files='/data/prompts/*.jsonl'

InstructGPT's recipe with OpenRLHF's settings: 128 prompts × 1 completion per rollout,
1 epoch × 4 minibatches, k1 KL penalty at 0.01 (adaptive off), γ 1, λ 0.95, the value model
from the reward model at a learning rate 9× the policy's. In memory: the policy and value
model with their AdamW states, the frozen reference and reward model. `:data/tiny` runs
the same recipe shrunk to a CPU against that data directory (its reward model: the tiny
one, `--config.rewards.reward_model=runs/reward_tiny`).
"""

from align_jax.objectives import config_for
from configs import data_files, shrink_to_cpu
from configs.pretrain.llama3_8b import get_config as pretrain_8b


def get_config(arg: str | None = None):
    c = config_for("ppo")
    c.model = pretrain_8b().model
    c.objective.update(num_generations=1, kl_coef=0.01, ppo_epochs=1, num_minibatches=4,
                       value_learning_rate=9e-6, missing_eos_penalty=1.0)  # fmt: skip
    c.update(total_steps=1000, log_every=1, eval_every=50, checkpoint_every=25)
    c.optimizer.update(learning_rate=1e-6, schedule="constant", warmup_steps=10,
                       weight_decay=0.0, grad_clip_norm=1.0)  # fmt: skip
    c.data.update(batch_size=128, max_prompt_len=1024, tokenizer="tokenizers/llama3.model",
                  chat_template="chatml")  # fmt: skip
    # prepare_micro_batches: the prepare pass's three forwards over 4 micro-batches of 32
    # rows (tools/plan.py: fits v5p-32 at 23.4 GiB per chip, docs/scale.md)
    c.rollout.update(max_new_tokens=1024, temperature=1.0, eval_num_samples=1,
                     log_samples_every=10, prepare_micro_batches=4)  # fmt: skip
    c.rewards.update(functions="reward_model", num_workers=0)
    if arg:
        shrink_to_cpu(c, arg, "rl_")
        c.data.update(batch_size=8, max_prompt_len=24, **data_files(arg, "rl_"))
        c.rollout.update(max_new_tokens=16)
    return c
