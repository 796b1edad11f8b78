"""SFT of a Llama-3-8B-shaped model on chat data (planning config for a TPU pod).

    python -m align_jax.train --distributed --config=configs/sft/llama3_8b.py \
        --workdir=/mnt/shared/runs/sft_8b --config.init_from=/mnt/shared/runs/llama3_8b \
        --config.data.train_files='/data/chat/*.jsonl'

`messages` records rendered with the chatml template, loss on assistant turns only,
first-fit packing into 4096-token rows, over-long conversations dropped (and counted).
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    c = base_config()
    c.stage = "sft"
    c.objective.name = "sft"
    c.total_steps = 5000
    c.log_every = 20
    c.eval_every = 500
    c.eval_steps = 50
    c.checkpoint_every = 500
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("llama3_8b")
    c.optimizer.update(learning_rate=2e-5, warmup_steps=100, weight_decay=0.0, end_lr_factor=0.0)
    c.data.update(
        chat_template="chatml",
        packing=True,
        overlong="drop",
        seq_len=4096,
        batch_size=128,
        tokenizer="tokenizers/llama3.model",
    )
    return c
