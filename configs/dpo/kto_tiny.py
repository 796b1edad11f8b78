"""Tiny KTO on the toy unpaired examples (thumbs up / down), from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/kto_tiny.py --workdir=runs/kto_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.loss_type=apo_zero_unpaired]

The reference point z0 pairs each prompt with the previous example's completion within the
(micro-)batch. Weights: `--config.objective.desirable_weight` / `undesirable_weight`
(the data: experiments/tiny_tasks.py, `unpaired_*.jsonl`, half desirable).
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "dpo"
    c.objective.name = "kto"
    c.objective.loss_type = "kto"
    c.objective.beta = 0.1
    c.total_steps = 60
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 30
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=5e-4, warmup_steps=5, weight_decay=0.0)
    c.data.update(
        train_files=f"{data_dir}/unpaired_train.jsonl",
        eval_files=f"{data_dir}/unpaired_eval.jsonl",
        tokenizer=f"{data_dir}/tok.model",
        seq_len=48,
        batch_size=16,
    )
    return c
