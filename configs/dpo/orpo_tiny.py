"""Tiny ORPO (NLL plus odds-ratio term, no reference) on the toy pairs.

    python -m align_jax.train --config=configs/dpo/orpo_tiny.py --workdir=runs/orpo_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.orpo_lambda=0.2]

ORPO was designed to replace SFT + preference optimisation in one stage; `init_from` may be
a pretrained or an SFT checkpoint (it only initialises the policy).
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "dpo"
    c.objective.name = "orpo"
    c.objective.loss_type = "orpo"
    c.objective.orpo_lambda = 0.1
    c.total_steps = 60
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 30
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=5e-4, warmup_steps=5, weight_decay=0.0)
    c.data.update(
        train_files=f"{data_dir}/pairs_train.jsonl",
        eval_files=f"{data_dir}/pairs_eval.jsonl",
        tokenizer=f"{data_dir}/tok.model",
        seq_len=48,
        batch_size=16,
    )
    return c
