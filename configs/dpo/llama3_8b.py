"""DPO of a Llama-3-8B-shaped SFT model on preference pairs (planning config for a TPU pod).

    python -m align_jax.train --distributed --config=configs/dpo/llama3_8b.py \
        --workdir=/mnt/shared/runs/dpo_8b --config.init_from=/mnt/shared/runs/sft_8b \
        --config.data.train_files='/data/pairs/*.jsonl'

Zephyr's recipe (arXiv 2310.16944): sigmoid loss at β 0.1, learning rate 5e-7 with 10%
warmup, 64 pairs of up to 2048 tokens per step, one epoch. In memory: the policy with its
AdamW state and the frozen reference (`--config.objective.precompute_ref_logps=True`
computes the reference's log-probs once and leaves it out of the step). `:data/tiny` runs
the same recipe shrunk to a CPU against that data directory.
"""

from align_jax.objectives import defaults
from configs import shrink_to_cpu
from configs.pretrain.llama3_8b import get_config as pretrain_8b


def get_config(arg: str | None = None):
    c = pretrain_8b()  # the model (and tokenizer) of the SFT policy
    c.objective = defaults("dpo")
    c.objective.update(loss_type="sigmoid", beta=0.1)
    c.update(total_steps=1000, log_every=10, eval_every=100, checkpoint_every=250)
    c.optimizer.update(learning_rate=5e-7, warmup_steps=100, weight_decay=0.0, end_lr_factor=0.0)
    c.data.update(num_epochs=1, overlong="drop", seq_len=2048, batch_size=64)
    if arg:
        shrink_to_cpu(c, arg, "pairs_")
    return c
