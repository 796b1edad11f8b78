"""Tiny pretraining run: about a minute on a 2-core CPU.

    python experiments/tiny_corpus.py --out data/tiny    # corpus (make demo does this)
    python tools/train_tokenizer.py --input data/tiny/train.jsonl \
        --model_prefix data/tiny/tok --vocab_size 512
    python -m align_jax.train --config=configs/pretrain/tiny.py --workdir=runs/pretrain_tiny

`:data_dir` picks another corpus folder: `--config=configs/pretrain/tiny.py:/path/to/dir`.
"""

from align_jax.config import model_config
from align_jax.objectives import config_for
from configs import data_files


def get_config(arg: str | None = None):
    c = config_for("pretrain")
    c.update(total_steps=300, log_every=25, eval_every=100, checkpoint_every=100)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=3e-3, warmup_steps=20, weight_decay=0.01)
    c.data.update(seq_len=128, batch_size=16, **data_files(arg))
    return c
