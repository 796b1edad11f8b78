"""DPO on preference pairs of a Llama-3-70B-shaped model (planning config for a TPU pod).

configs/dpo/llama3_8b.py's recipe (data, batch, schedule, objective) on the 70.55B
shape: 80 layers, d_model 8192, 64 query heads and 8 KV heads of 128, SwiGLU 28672, vocab
128256; bf16 compute over fp32 parameters, full rematerialisation, FSDP over all chips.
`tools/plan.py --config=configs/dpo/llama3_70b.py --topology=v5p-128` says where it
fits (docs/scale.md). `:data/tiny` is the 8B config's CPU-sized run.
"""

from align_jax.config import model_config
from configs.dpo.llama3_8b import get_config as dpo_8b


def get_config(arg: str | None = None):
    c = dpo_8b(arg)
    if not arg:
        c.model = model_config("llama3_70b", head=c.model.head)
    return c
