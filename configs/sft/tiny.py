"""Tiny SFT on arithmetic questions, starting from the tiny pretraining run.

    python experiments/tiny_tasks.py --out data/tiny
    python -m align_jax.train --config=configs/sft/tiny.py --workdir=runs/sft_tiny \
        --config.init_from=runs/pretrain_tiny

`:data_dir` picks another data folder. The model must match the pretraining config's.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "sft"
    c.objective.name = "sft"
    c.total_steps = 150
    c.log_every = 25
    c.eval_every = 75
    c.checkpoint_every = 75
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=1e-3, warmup_steps=10, weight_decay=0.01)
    c.data.update(
        train_files=f"{data_dir}/sft_train.jsonl",
        eval_files=f"{data_dir}/sft_eval.jsonl",
        tokenizer=f"{data_dir}/tok.model",
        seq_len=128,
        batch_size=16,
    )
    return c
