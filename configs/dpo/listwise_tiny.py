"""Tiny listwise preference optimisation on the toy ranked lists, from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/listwise_tiny.py --workdir=runs/listwise_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.loss_type=soft_pairwise]

`plackett_luce` fits the ranking (best first); `soft_pairwise` turns the records' scores into
soft pairwise labels with temperature `--config.objective.score_tau`. Lists have up to
`config.data.list_size` responses (the data: experiments/tiny_tasks.py, `lists_*.jsonl`).
The frozen reference is the init_from checkpoint, run in the train step.
"""

from align_jax.objectives import defaults
from configs import data_files
from configs.dpo.tiny import get_config as dpo_tiny


def get_config(arg: str | None = None):
    c = dpo_tiny(arg)
    c.objective = defaults("listwise")  # plackett_luce, beta 0.1
    c.objective.score_tau = 0.25
    c.data.update(batch_size=8, list_size=3, **data_files(arg, "lists_"))
    return c
