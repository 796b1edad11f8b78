"""Tiny SFT on arithmetic questions, starting from the tiny pretraining run.

    python experiments/tiny_tasks.py --out data/tiny
    python -m align_jax.train --config=configs/sft/tiny.py --workdir=runs/sft_tiny \
        --config.init_from=runs/pretrain_tiny

`:data_dir` picks another data folder. The model must match the pretraining config's.
"""

from align_jax.config import model_config
from align_jax.objectives import config_for
from configs import data_files


def get_config(arg: str | None = None):
    c = config_for("sft")
    c.update(total_steps=150, log_every=25, eval_every=75, checkpoint_every=75)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=1e-3, warmup_steps=10, weight_decay=0.01)
    c.data.update(seq_len=128, batch_size=16, **data_files(arg, "sft_"))
    return c
