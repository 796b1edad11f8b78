"""SFT of a Llama-3-8B-shaped model on chat data (planning config for a TPU pod).

    python -m align_jax.train --distributed --config=configs/sft/llama3_8b.py \
        --workdir=/mnt/shared/runs/sft_8b --config.init_from=/mnt/shared/runs/llama3_8b \
        --config.data.train_files='/data/chat/*.jsonl'

`messages` records rendered with the chatml template, loss on assistant turns only,
first-fit packing into 4096-token rows, over-long conversations dropped (and counted).
`:data/tiny` runs the same recipe shrunk to a CPU against that data directory.
"""

from align_jax.objectives import defaults
from configs import shrink_to_cpu
from configs.pretrain.llama3_8b import get_config as pretrain_8b


def get_config(arg: str | None = None):
    c = pretrain_8b()  # the model (and tokenizer) that SFT continues
    c.objective = defaults("sft")
    c.update(total_steps=5000, log_every=20, eval_every=500, checkpoint_every=500)
    c.optimizer.update(learning_rate=2e-5, warmup_steps=100, weight_decay=0.0, end_lr_factor=0.0)
    c.data.update(chat_template="chatml", packing=True, overlong="drop", seq_len=4096,
                  batch_size=128)  # fmt: skip
    if arg:
        shrink_to_cpu(c, arg, "sft_")
    return c
