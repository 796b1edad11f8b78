"""Tiny R1-Zero: GRPO straight from the pretrained model, no SFT (arXiv 2501.12948).

    python experiments/tiny_tasks.py --out data/tiny       # r1_*.jsonl prompts
    python -m align_jax.train --config=configs/grpo/r1_zero_tiny.py \
        --workdir=runs/r1_zero_tiny --config.init_from=runs/pretrain_tiny

The prompt is R1-Zero's template in miniature, "user: what is two plus three? assistant:";
the corpus holds a few such dialogues, some answered as `<think> ... </think> <answer> ...
</answer>`, so the pretrained model sometimes writes the format. Two rewards, as
DeepSeek-R1-Zero: the format (`r1_format`) and the answer inside `<answer>` (`answer_match`
with `answer_extraction="answer_tag"`); a held-out sample passes (`pass_at_k`) only with
both (total 2). DAPO's clip-higher (ε_high 0.28) and token-level loss, no reference.
`:data_dir` picks another data folder.
"""

from configs.grpo.tiny import get_config as grpo_tiny


def get_config(arg: str | None = None):
    c = grpo_tiny(arg)
    c.objective.update(epsilon_high=0.28)
    c.data.update(train_files=c.data.train_files.replace("rl_", "r1_"),
                  eval_files=c.data.eval_files.replace("rl_", "r1_"))  # fmt: skip
    c.rollout.update(max_new_tokens=32, pass_threshold=2.0)
    c.rewards.update(functions="r1_format,answer_match", answer_extraction="answer_tag")
    return c
