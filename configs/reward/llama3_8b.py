"""Reward model on a Llama-3-8B-shaped SFT backbone (planning config for a TPU pod).

    python -m align_jax.train --distributed --config=configs/reward/llama3_8b.py \
        --workdir=/mnt/shared/runs/rm_8b --config.init_from=/mnt/shared/runs/sft_8b \
        --config.data.train_files='/data/prefs/*.jsonl'

One epoch over preference pairs, learning rate 9e-6 (InstructGPT-scale), centering
coefficient 0.01 to keep rewards near zero for the RL stage that consumes them.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    c = base_config()
    c.stage = "reward"
    c.objective.name = "reward"
    c.objective.loss_type = "bradley_terry"
    c.objective.center_coef = 0.01
    c.total_steps = 2000
    c.log_every = 20
    c.eval_every = 250
    c.eval_steps = 50
    c.checkpoint_every = 500
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("llama3_8b", head="scalar")
    c.optimizer.update(learning_rate=9e-6, warmup_steps=50, weight_decay=0.0, end_lr_factor=0.0)
    c.data.update(
        num_epochs=1,
        overlong="drop",
        seq_len=2048,
        batch_size=64,
        tokenizer="tokenizers/llama3.model",
    )
    return c
