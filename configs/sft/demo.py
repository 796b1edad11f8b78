"""The demo's SFT (experiments/demo.py): configs/sft/tiny.py on a careless demonstrator's
answers (`demo_sft_*.jsonl`: 30% of them copy a number from the question instead of
answering). `:data_dir` picks another data folder.
"""

from configs import data_files
from configs.sft.tiny import get_config as sft_tiny


def get_config(arg: str | None = None):
    c = sft_tiny(arg)
    c.data.update(**data_files(arg, "demo_sft_"))
    return c
