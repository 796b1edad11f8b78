"""GRPO of a Llama-3-8B-shaped SFT model on math prompts (planning config for a TPU pod).

    python -m align_jax.train --distributed --config=configs/grpo/llama3_8b.py \
        --workdir=/mnt/shared/runs/grpo_8b --config.init_from=/mnt/shared/runs/sft_8b \
        --config.data.train_files='/data/math/*.jsonl'

DAPO's recipe (arXiv 2503.14476) on GRPO: 64 prompts × 16 completions per rollout, 4
minibatch updates per rollout, token-level loss, clip-higher (ε 0.2 / 0.28), dynamic
sampling, soft overlong punishment over the last 512 of 2048 new tokens, no KL term (so no
reference model in memory). Rewards: math-verify equivalence of the final answer
(`pip install align_jax[math]`) plus the R1 format. `:data/tiny` runs the same recipe
shrunk to a CPU against that data directory.
"""

from align_jax.objectives import config_for
from configs import data_files, shrink_to_cpu
from configs.pretrain.llama3_8b import get_config as pretrain_8b


def get_config(arg: str | None = None):
    c = config_for("grpo")
    c.model = pretrain_8b().model
    c.objective.update(num_generations=16, loss_type="dapo", epsilon_high=0.28,
                       num_minibatches=4, dynamic_sampling=True, max_sampling_rounds=3,
                       overlong_buffer=512)  # fmt: skip
    c.update(total_steps=500, log_every=1, eval_every=50, checkpoint_every=25)
    c.optimizer.update(learning_rate=1e-6, schedule="constant", warmup_steps=10,
                       weight_decay=0.1, grad_clip_norm=1.0)  # fmt: skip
    c.data.update(batch_size=64, max_prompt_len=1024, tokenizer="tokenizers/llama3.model",
                  chat_template="chatml")  # fmt: skip
    # prepare_micro_batches: the prepare pass's forward over 8 micro-batches of 128 rows,
    # 1/8 of the logits alive (1,024 rows at once asked for 386 GiB on v5p-16)
    c.rollout.update(max_new_tokens=2048, temperature=1.0, eval_num_samples=8,
                     pass_threshold=1.0, log_samples_every=10,
                     prepare_micro_batches=8)  # fmt: skip
    c.rewards.update(functions="math_equiv,r1_format", weights="1.0,0.1", num_workers=8)
    if arg:
        shrink_to_cpu(c, arg, "rl_")
        c.objective.update(num_generations=4, overlong_buffer=4)
        c.data.update(batch_size=4, max_prompt_len=24, **data_files(arg, "rl_"))
        c.rollout.update(max_new_tokens=16, eval_num_samples=2)
        c.rewards.update(functions="tiny_corpus.answer_reward", weights="", num_workers=1)
    return c
