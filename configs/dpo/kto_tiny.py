"""Tiny KTO on the toy unpaired examples (thumbs up / down), from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/kto_tiny.py --workdir=runs/kto_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.loss_type=apo_zero_unpaired]

The reference point z0 pairs each prompt with the previous example's completion within the
(micro-)batch. Weights: `--config.objective.desirable_weight` / `undesirable_weight`
(the data: experiments/tiny_tasks.py, `unpaired_*.jsonl`, half desirable).
"""

from align_jax.objectives import defaults
from configs import data_files
from configs.dpo.tiny import get_config as dpo_tiny


def get_config(arg: str | None = None):
    c = dpo_tiny(arg)
    c.objective = defaults("kto")  # loss_type kto, beta 0.1
    c.data.update(data_files(arg, "unpaired_"))
    return c
