"""Tiny SimPO (reference-free) on the toy preference pairs, from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/simpo_tiny.py --workdir=runs/simpo_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.simpo_gamma=0.5]

No reference model: `init_from` only initialises the policy. β = 2, γ = 1 are the SimPO
repository's base-model setting.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "dpo"
    c.objective.name = "simpo"
    c.objective.loss_type = "simpo"
    c.objective.beta = 2.0
    c.objective.simpo_gamma = 1.0
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
