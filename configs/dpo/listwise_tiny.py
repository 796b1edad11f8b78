"""Tiny listwise preference optimisation on the toy ranked lists, from the tiny SFT run.

    python -m align_jax.train --config=configs/dpo/listwise_tiny.py --workdir=runs/listwise_tiny \
        --config.init_from=runs/sft_tiny [--config.objective.loss_type=soft_pairwise]

`plackett_luce` fits the ranking (best first); `soft_pairwise` turns the records' scores into
soft pairwise labels with temperature `--config.objective.score_tau`. Lists have up to
`config.data.list_size` responses (the data: experiments/tiny_tasks.py, `lists_*.jsonl`).
The frozen reference is the init_from checkpoint, run in the train step.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "dpo"
    c.objective.name = "listwise"
    c.objective.loss_type = "plackett_luce"
    c.objective.beta = 0.1
    c.objective.score_tau = 0.25
    c.total_steps = 60
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 30
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("tiny")
    c.optimizer.update(learning_rate=5e-4, warmup_steps=5, weight_decay=0.0)
    c.data.update(
        train_files=f"{data_dir}/lists_train.jsonl",
        eval_files=f"{data_dir}/lists_eval.jsonl",
        tokenizer=f"{data_dir}/tok.model",
        seq_len=48,
        batch_size=8,
        list_size=3,
    )
    return c
