"""Tiny DPO on the toy preference pairs, policy and frozen reference from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/tiny.py --workdir=runs/dpo_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.loss_type=ipo]

Any of `align_jax.losses.DPO_LOSS_TYPES` (or a comma-joined mix with
`--config.objective.loss_weights`) swaps the variant with no other change.
`--config.objective.precompute_ref_logps=True` computes the reference log-probs once.
The other preference configs in this folder derive from this one (same data, schedule and
model), changing the objective and what it needs.
"""

from align_jax.config import model_config
from align_jax.objectives import config_for
from configs import data_files


def get_config(arg: str | None = None):
    c = config_for("dpo")
    c.objective.update(loss_type="sigmoid", beta=0.1)
    c.update(total_steps=60, log_every=10, eval_every=30, checkpoint_every=30)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=5e-4, warmup_steps=5, weight_decay=0.0)
    c.data.update(seq_len=48, batch_size=16, **data_files(arg, "pairs_"))
    return c
