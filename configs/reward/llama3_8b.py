"""Reward model on a Llama-3-8B-shaped SFT backbone (planning config for a TPU pod).

    python -m align_jax.train --distributed --config=configs/reward/llama3_8b.py \
        --workdir=/mnt/shared/runs/rm_8b --config.init_from=/mnt/shared/runs/sft_8b \
        --config.data.train_files='/data/prefs/*.jsonl'

One epoch over preference pairs, learning rate 9e-6 (InstructGPT-scale), centering
coefficient 0.01 to keep rewards near zero for the RL stage that consumes them.
`:data/tiny` runs the same recipe shrunk to a CPU against that data directory.
"""

from align_jax.objectives import defaults
from configs import shrink_to_cpu
from configs.pretrain.llama3_8b import get_config as pretrain_8b


def get_config(arg: str | None = None):
    c = pretrain_8b()  # the model (and tokenizer) of the SFT backbone, with a score head
    c.model.head = "scalar"
    c.objective = defaults("reward")
    c.objective.center_coef = 0.01
    c.update(total_steps=2000, log_every=20, eval_every=250, checkpoint_every=500)
    c.optimizer.update(learning_rate=9e-6, warmup_steps=50, weight_decay=0.0, end_lr_factor=0.0)
    c.data.update(num_epochs=1, overlong="drop", seq_len=2048, batch_size=64)
    if arg:
        shrink_to_cpu(c, arg, "pairs_")
    return c
