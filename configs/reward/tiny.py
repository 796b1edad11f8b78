"""Tiny reward model (Bradley–Terry) on the toy preference pairs, from the tiny SFT run.

    python -m align_jax.train --config=configs/reward/tiny.py --workdir=runs/reward_tiny \
        --config.init_from=runs/sft_tiny

The backbone comes from `init_from`; the scalar score head is new (the log says so).
Score text with it: `python -m align_jax.score --workdir=runs/reward_tiny --input=x.jsonl`.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "reward"
    c.objective.name = "reward"
    c.objective.loss_type = "bradley_terry"
    c.objective.center_coef = 0.0
    c.total_steps = 100
    c.log_every = 20
    c.eval_every = 50
    c.checkpoint_every = 50
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("tiny", head="scalar")
    c.optimizer.update(learning_rate=5e-4, warmup_steps=10, weight_decay=0.0)
    c.data.update(
        train_files=f"{data_dir}/pairs_train.jsonl",
        eval_files=f"{data_dir}/pairs_eval.jsonl",
        tokenizer=f"{data_dir}/tok.model",
        seq_len=48,
        batch_size=16,
    )
    return c
