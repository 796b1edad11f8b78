"""Run configs: one file per run, `configs/<stage>/<name>.py`, each with `get_config(arg=None)`.

`python -m align_jax.train --config=configs/<stage>/<name>.py[:arg]` imports the file as the
module `configs.<stage>.<name>` (align_jax/cli.py), calls `get_config(arg)` with the text
after `:` (None without one), locks the result and then applies each `--config.key=value`.

The convention every file keeps:

- `get_config` starts from `align_jax.objectives.config_for(<objective>)`, so `config.objective`
  holds that objective's keys only, and returns the config unlocked.
- `arg` is the local data directory, laid out as `experiments/tiny_corpus.py` and
  `experiments/tiny_tasks.py` write it (`tok.model`, `train.jsonl`, `sft_*.jsonl`,
  `pairs_*.jsonl`, `lists_*.jsonl`, `unpaired_*.jsonl`, `rl_*.jsonl`, `r1_*.jsonl`). The
  tiny configs read `data/tiny` without one. The 8B configs without one are the pod recipe
  (data named with `--config.data.train_files=...`); with one, the same recipe shrunk to run
  on a CPU against that directory.
- A variant imports the config it derives from and changes what differs:
  `from configs.dpo.tiny import get_config as dpo_tiny`, then `c = dpo_tiny(arg)`.
"""

import os
import sys

# The online-RL configs name the tiny task's gold reward by its dotted path
# `tiny_corpus.answer_reward` (experiments/tiny_corpus.py), and experiments/ is a folder of
# scripts, not a package. align_jax/cli.py imports every config as `configs.<stage>.<name>`,
# so this runs first; the reward worker processes inherit this sys.path.
_EXPERIMENTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"
)
if _EXPERIMENTS not in sys.path:
    sys.path.append(_EXPERIMENTS)

TINY_DATA = "data/tiny"  # what `make demo` writes


def data_files(arg: str | None, kind: str = "") -> dict:
    """`config.data` file fields for the data directory `arg` (default TINY_DATA): the
    `{kind}train.jsonl` / `{kind}eval.jsonl` splits and the `tok.model` tokenizer."""
    data_dir = arg or TINY_DATA
    return {
        "train_files": f"{data_dir}/{kind}train.jsonl",
        "eval_files": f"{data_dir}/{kind}eval.jsonl",
        "tokenizer": f"{data_dir}/tok.model",
    }


def shrink_to_cpu(c, data_dir: str, kind: str = "") -> None:
    """Shrinks an 8B recipe in place to run in seconds on a CPU against `data_dir`: the
    model keeps its shape ratios (4 query heads per KV head, SwiGLU width ~3.5 d_model) and
    its RoPE scaling, in float32; steps, batches and rows become tiny."""
    c.model.update(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1,
                   head_dim=16, mlp_dim=224, max_seq_len=128, dtype="float32")  # fmt: skip
    c.model.rope_scaling.original_max_position = 64
    c.data.update(seq_len=128, batch_size=8, **data_files(data_dir, kind))
    c.update(total_steps=20, log_every=5, eval_every=10, eval_steps=2, checkpoint_every=10)
    c.optimizer.warmup_steps = 5
