"""Tiny ORPO (NLL plus odds-ratio term, no reference) on the toy pairs.

    python -m align_jax.train --config=configs/dpo/orpo_tiny.py --workdir=runs/orpo_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.orpo_lambda=0.2]

ORPO was designed to replace SFT + preference optimisation in one stage; `init_from` may be
a pretrained or an SFT checkpoint (it only initialises the policy).
"""

from align_jax.objectives import defaults
from configs.dpo.tiny import get_config as dpo_tiny


def get_config(arg: str | None = None):
    c = dpo_tiny(arg)
    c.objective = defaults("orpo")  # orpo_lambda 0.1
    return c
