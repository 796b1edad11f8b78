"""Tiny DPO with LoRA: only rank-8 adapters on every projection train; the frozen SFT model
is both their base and the reference, held once.

    python -m align_jax.train --config=configs/dpo/lora_tiny.py --workdir=runs/dpo_lora_tiny \
        --config.init_from=runs/sft_tiny [--config.model.lora.targets=q,v]

The workdir's checkpoints hold the adapters only; `align_jax.loading.load_run` (and so
`align_jax.generate` and `align_jax.score`) returns them merged into the base.
"""

from align_jax.config import model_config
from configs.dpo.tiny import get_config as dpo_tiny


def get_config(arg: str | None = None):
    c = dpo_tiny(arg)  # the same DPO run, data and schedule
    c.model = model_config("tiny", lora=dict(rank=8, alpha=16.0, targets="q,k,v,o,gate,up,down"))
    # Adapters start at B = 0 and move the model through a rank-8 product only: they take
    # larger steps than full fine-tuning (configs/dpo/tiny.py: 5e-4).
    c.optimizer.learning_rate = 2e-3
    return c
