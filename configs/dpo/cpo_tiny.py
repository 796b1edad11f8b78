"""Tiny CPO (reference-free DPO plus NLL on chosen) on the toy pairs, from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/cpo_tiny.py --workdir=runs/cpo_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.cpo_alpha=0.5]

No reference model: `init_from` only initialises the policy.
"""

from align_jax.objectives import defaults
from configs.dpo.tiny import get_config as dpo_tiny


def get_config(arg: str | None = None):
    c = dpo_tiny(arg)
    c.objective = defaults("cpo")  # beta 0.1, cpo_alpha 1.0
    return c
