"""The demo's reward model (experiments/demo.py): configs/reward/tiny.py on pairs a labeller
gave by the gold reward with 10% of the labels flipped (`gold_pairs_*.jsonl`). It learns to
catch copied numbers and hardly any near misses: a proxy for the gold reward.
`:data_dir` picks another data folder.
"""

from configs import data_files
from configs.reward.tiny import get_config as reward_tiny


def get_config(arg: str | None = None):
    c = reward_tiny(arg)
    c.data.update(**data_files(arg, "gold_pairs_"))
    return c
