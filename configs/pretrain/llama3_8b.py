"""Llama-3-8B-shaped pretraining, for planning runs on TPU pods (not run on a laptop).

    python -m align_jax.train --distributed --config=configs/pretrain/llama3_8b.py \
        --workdir=/mnt/shared/runs/llama3_8b --config.data.train_files='/data/*.jsonl'

8.03B parameters: 32 layers, d_model 4096, 32 query heads and 8 KV heads of 128, SwiGLU
14336, vocab 128256, RoPE theta 500000 with Llama-3.1 scaling. bf16 compute over fp32
parameters, full rematerialisation of each scanned block, FSDP over all chips.
`:runlocal` keeps the shapes' ratios but shrinks everything to run on a CPU in seconds.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    c = base_config()
    c.stage = "pretrain"
    c.total_steps = 100_000
    c.log_every = 50
    c.eval_every = 2000
    c.eval_steps = 50
    c.checkpoint_every = 1000
    c.mesh.update(data=1, fsdp=-1, tensor=1)

    c.model = model_config("llama3_8b")
    m = c.model

    c.optimizer.update(
        name="adamw", learning_rate=3e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95
    )
    c.data.seq_len = 8192
    c.data.batch_size = 512
    c.data.tokenizer = "tokenizers/llama3.model"

    if arg == "runlocal":
        m.update(
            vocab_size=512,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=1,
            head_dim=16,
            mlp_dim=224,
            max_seq_len=128,
        )
        m.rope_scaling.original_max_position = 64
        m.dtype = "float32"
        c.data.update(
            seq_len=128,
            batch_size=8,
            tokenizer="data/tiny/tok.model",
            train_files="data/tiny/train.jsonl",
            eval_files="data/tiny/eval.jsonl",
        )
        c.update(total_steps=20, log_every=5, eval_every=10, eval_steps=2, checkpoint_every=10)
        c.optimizer.warmup_steps = 5
    return c
