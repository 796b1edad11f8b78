"""Tiny DPO with LoRA: only rank-8 adapters on every projection train; the frozen SFT model
is both their base and the reference, held once.

    python -m align_jax.train --config=configs/dpo/lora_tiny.py --workdir=runs/dpo_lora_tiny \
        --config.init_from=runs/sft_tiny [--config.model.lora.targets=q,v]

The workdir's checkpoints hold the adapters only; `align_jax.checkpoint.load_run` (and so
`align_jax.generate` and `align_jax.score`) returns them merged into the base.
"""

from align_jax.config import base_config, model_config


def get_config(arg: str | None = None):
    data_dir = arg or "data/tiny"
    c = base_config()
    c.stage = "dpo"
    c.objective.name = "dpo"
    c.objective.loss_type = "sigmoid"
    c.objective.beta = 0.1
    c.total_steps = 60
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 30
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.model = model_config("tiny", lora=dict(rank=8, alpha=16.0, targets="q,k,v,o,gate,up,down"))
    # Adapters start at B = 0 and move the model through a rank-8 product only: they take
    # larger steps than full fine-tuning (configs/dpo/tiny.py: 5e-4).
    c.optimizer.update(learning_rate=2e-3, warmup_steps=5, weight_decay=0.0)
    c.data.update(
        train_files=f"{data_dir}/pairs_train.jsonl",
        eval_files=f"{data_dir}/pairs_eval.jsonl",
        tokenizer=f"{data_dir}/tok.model",
        seq_len=48,
        batch_size=16,
    )
    return c
