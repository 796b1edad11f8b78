"""Tiny DPO with LoRA: only rank-8 adapters on every projection train; the frozen SFT model
is both their base and the reference, held once.

    python -m align_jax.train --config=configs/dpo/lora_tiny.py --workdir=runs/dpo_lora_tiny \
        --config.init_from=runs/sft_tiny [--config.model.lora.targets=q,v]

The workdir's checkpoints hold the adapters only; `align_jax.checkpoint.load_run` (and so
`align_jax.generate` and `align_jax.score`) returns them merged into the base.
"""

import importlib.util
import os

from align_jax.config import model_config


def _dpo_tiny(arg):
    """configs/dpo/tiny.py's config, loaded from beside this file (configs are files, not a
    package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")
    spec = importlib.util.spec_from_file_location("configs_dpo_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str | None = None):
    c = _dpo_tiny(arg)  # the same DPO run, data and schedule
    c.model = model_config("tiny", lora=dict(rank=8, alpha=16.0, targets="q,k,v,o,gate,up,down"))
    # Adapters start at B = 0 and move the model through a rank-8 product only: they take
    # larger steps than full fine-tuning (configs/dpo/tiny.py: 5e-4).
    c.optimizer.learning_rate = 2e-3
    return c
