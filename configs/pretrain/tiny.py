"""Tiny pretraining run: about a minute on a 2-core CPU.

    python experiments/tiny_corpus.py --out data/tiny    # corpus (make demo does this)
    python tools/train_tokenizer.py --input data/tiny/train.jsonl \
        --model_prefix data/tiny/tok --vocab_size 512
    python -m align_jax.train --config=configs/pretrain/tiny.py --workdir=runs/pretrain_tiny

`:data_dir` picks another corpus folder: `--config=configs/pretrain/tiny.py:/path/to/dir`.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "pretrain"
    c.total_steps = 300
    c.log_every = 25
    c.eval_every = 100
    c.checkpoint_every = 100
    c.mesh.update(data=1, fsdp=-1, tensor=1)

    c.model = model_config("tiny")

    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.01

    c.data.train_files = f"{data_dir}/train.jsonl"
    c.data.eval_files = f"{data_dir}/eval.jsonl"
    c.data.tokenizer = f"{data_dir}/tok.model"
    c.data.seq_len = 128
    c.data.batch_size = 16
    return c
