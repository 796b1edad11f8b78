"""Llama-3-8B-shaped pretraining, for planning runs on TPU pods (not run on a laptop).

    python -m align_jax.train --distributed --config=configs/pretrain/llama3_8b.py \
        --workdir=/mnt/shared/runs/llama3_8b --config.data.train_files='/data/*.jsonl'

8.03B parameters: 32 layers, d_model 4096, 32 query heads and 8 KV heads of 128, SwiGLU
14336, vocab 128256, RoPE theta 500000 with Llama-3.1 scaling. bf16 compute over fp32
parameters, full rematerialisation of each scanned block, FSDP over all chips.
`:data/tiny` keeps the recipe and the shapes' ratios but shrinks everything to run on a CPU
in seconds against that data directory.
"""

from align_jax.config import model_config
from align_jax.objectives import config_for
from configs import shrink_to_cpu


def get_config(arg: str | None = None):
    c = config_for("pretrain")
    c.update(total_steps=100_000, log_every=50, eval_every=2000, eval_steps=50,
             checkpoint_every=1000)  # fmt: skip
    c.model = model_config("llama3_8b")
    c.optimizer.update(learning_rate=3e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95)
    c.data.update(seq_len=8192, batch_size=512, tokenizer="tokenizers/llama3.model")
    if arg:
        shrink_to_cpu(c, arg)
    return c
