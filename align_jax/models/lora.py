"""LoRA (arXiv 2106.09685): low-rank adapters on chosen projections, split from a frozen base.

A targeted projection `x @ W` becomes `x @ W + (alpha / rank) * (x @ A) @ B`, with A
[*in, rank] and B [rank, *out] stored next to the kernel as `<name>_lora_a` / `<name>_lora_b`
(`config.model.lora`: `rank` (0 = off), `alpha`, `targets`). B starts at zero, so a fresh
adapter leaves the model exactly as it was.

This module holds the adapters' creation on a module's kernels (`add_adapters`; the layers'
`linear` applies them) and the parameter-tree side: which leaves are adapters, splitting a
parameter dict into adapters and base and joining them again, and `merge_lora`, which folds
trained adapters into the kernels so the result is a plain model (for sampling, scoring,
export).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

# Projection (`<name>_kernel`) -> how many of its kernel's dims after the layer stack are
# inputs: the attention output kernel [heads, head_dim, d] reads two.
TARGETS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
_SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int
    scale: float  # alpha / rank
    targets: tuple[str, ...]


def settings(model_cfg) -> LoraSettings | None:
    """The model's LoRA settings, or None when LoRA is off (rank 0, or a config from before
    LoRA existed). An unknown target is an error naming the valid ones."""
    lora = model_cfg.get("lora")
    if lora is None or int(lora.rank) == 0:
        return None
    if int(lora.rank) < 0:
        raise ValueError(f"config.model.lora.rank={lora.rank} must be >= 0 (0 turns LoRA off)")
    targets = tuple(t.strip() for t in str(lora.targets).split(",") if t.strip())
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(
            f"config.model.lora.targets '{lora.targets}' is not a comma list of "
            f"{', '.join(TARGETS)}"
        )
    return LoraSettings(int(lora.rank), float(lora.alpha) / int(lora.rank), targets)


def add_adapters(module, cfg, rngs, n_stack: int) -> None:
    """LoRA adapters on the module's kernels that `config.model.lora.targets` names, in each
    kernel's dtype: A [*stack, *in, rank] drawn like PEFT's default (kaiming-uniform with
    a = sqrt(5), i.e. U(+-1 / sqrt(fan_in))) and B [*stack, rank, *out] zero, so a fresh
    adapter leaves the model unchanged. Called at the end of the module's constructor, so
    the random draws keep their place in the `rngs` stream."""
    lora = settings(cfg)
    if lora is None:
        return
    module.lora_scale = lora.scale
    for name in lora.targets:
        kernel = getattr(module, f"{name}_kernel", None)
        if kernel is None:
            continue
        cut = n_stack + TARGETS[name]
        shape, dtype = kernel[...].shape, kernel[...].dtype
        axes = tuple(kernel.get_metadata()["axes"])
        bound = 1.0 / math.sqrt(math.prod(shape[n_stack:cut]))
        a = jax.random.uniform(rngs.params(), (*shape[:cut], lora.rank), dtype, -bound, bound)
        setattr(module, f"{name}_lora_a", nnx.Param(a, axes=(*axes[:cut], None)))
        b = jnp.zeros((*shape[:n_stack], lora.rank, *shape[cut:]), dtype)
        b_axes = (*axes[:n_stack], None, *axes[cut:])
        setattr(module, f"{name}_lora_b", nnx.Param(b, axes=b_axes))


def is_adapter(name: str) -> bool:
    return name.endswith(_SUFFIXES)


def split(tree: dict, trainable_heads: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(adapters and `trainable_heads`, everything else) of a nested parameter dict.

    Works on any tree keyed like the parameters (arrays, shapes, shardings). Top-level keys
    in `trainable_heads` (a reward model's new score head) go with the adapters whole.
    """

    def walk(node, top):
        picked, rest = {}, {}
        for key, value in node.items():
            if top and key in trainable_heads:
                picked[key] = value
            elif isinstance(value, dict):
                p, r = walk(value, False)
                if p:
                    picked[key] = p
                if r:
                    rest[key] = r
            elif is_adapter(key):
                picked[key] = value
            else:
                rest[key] = value
        return picked, rest

    return walk(tree, True)


def join(a: dict, b: dict) -> dict:
    """The union of two disjoint nested dicts (the inverse of `split`); no arrays are copied."""
    out = dict(a)
    for key, value in b.items():
        out[key] = join(out[key], value) if key in out else value
    return out


def merge_lora(params: dict, model_cfg) -> dict:
    """Folds every adapter into its kernel, `W + (alpha / rank) * A @ B` (in float32, then the
    kernel's dtype), and drops the adapter entries: the parameters of the same model with
    `config.model.lora.rank = 0`. Jitted, each merged kernel keeps its input's sharding.
    """
    lora = settings(model_cfg)
    if lora is None:
        return params

    def merge(node):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out[key] = merge(value)
            elif is_adapter(key):
                continue
            elif key.endswith("_kernel") and key[: -len("_kernel")] + "_lora_a" in node:
                name = key[: -len("_kernel")]
                a, b = node[name + "_lora_a"], node[name + "_lora_b"]
                stack = a.shape[: a.ndim - 1 - TARGETS[name]]
                a2 = a.astype(jnp.float32).reshape(*stack, -1, lora.rank)
                b2 = b.astype(jnp.float32).reshape(*stack, lora.rank, -1)
                delta = (lora.scale * (a2 @ b2)).reshape(value.shape)
                out[key] = (value.astype(jnp.float32) + delta).astype(value.dtype)
            else:
                out[key] = value
        return out

    kept = split(params)[1]  # the output's structure: everything but the adapters
    if all(isinstance(x, jax.Array) for x in jax.tree.leaves(kept)):
        return jax.jit(merge, out_shardings=jax.tree.map(lambda x: x.sharding, kept))(params)
    return jax.jit(merge)(params)


def count_adapter_params(model_cfg) -> int:
    """Adapter parameters of the whole model: rank * (in + out) per targeted projection."""
    lora = settings(model_cfg)
    if lora is None:
        return 0
    c = model_cfg
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    in_out = {
        "q": (c.d_model, q),
        "k": (c.d_model, kv),
        "v": (c.d_model, kv),
        "o": (q, c.d_model),
        "gate": (c.d_model, c.mlp_dim),
        "up": (c.d_model, c.mlp_dim),
        "down": (c.mlp_dim, c.d_model),
    }
    return c.n_layers * sum(lora.rank * sum(in_out[t]) for t in lora.targets)
