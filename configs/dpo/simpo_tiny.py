"""Tiny SimPO (reference-free) on the toy preference pairs, from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/simpo_tiny.py --workdir=runs/simpo_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.simpo_gamma=0.5]

No reference model: `init_from` only initialises the policy. β = 2, γ = 1 are the SimPO
repository's base-model setting.
"""

from align_jax.objectives import defaults
from configs.dpo.tiny import get_config as dpo_tiny


def get_config(arg: str | None = None):
    c = dpo_tiny(arg)
    c.objective = defaults("simpo")
    c.objective.update(beta=2.0, simpo_gamma=1.0)
    return c
