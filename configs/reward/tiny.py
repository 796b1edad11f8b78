"""Tiny reward model (Bradley–Terry) on the toy preference pairs, from the tiny SFT run.

    python -m align_jax.train --config=configs/reward/tiny.py --workdir=runs/reward_tiny \
        --config.init_from=runs/sft_tiny

The backbone comes from `init_from`; the scalar score head is new (the log says so).
Score text with it: `python -m align_jax.score --workdir=runs/reward_tiny --input=x.jsonl`.
"""

from align_jax.config import model_config
from align_jax.objectives import config_for
from configs import data_files


def get_config(arg: str | None = None):
    c = config_for("reward")
    c.update(total_steps=100, log_every=20, eval_every=50, checkpoint_every=50)
    c.model = model_config("tiny", head="scalar")
    c.optimizer.update(learning_rate=5e-4, warmup_steps=10, weight_decay=0.0)
    c.data.update(seq_len=48, batch_size=16, **data_files(arg, "pairs_"))
    return c
