"""Hugging Face tensors <-> align_jax parameters: names, layouts, and reading a directory.

Weights convert by transposing and reshaping only: align_jax's kernels are `x @ W` with
split-half RoPE, Hugging Face's are `x @ W.T` in the same RoPE layout. Reading onto a
sharded mesh builds every parameter with `jax.make_array_from_callback`, so each host reads
(memory-mapped) only the slices of the layers its devices hold, one tensor at a time; the
whole model is never materialised on one host. Writing (`hf_tensors`) moves one layer at a
time off the devices.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import jax
import numpy as np

from align_jax.interop.hf_config import (
    GEMMA_TYPES,
    InteropError,
    model_config_from_hf,
    read_hf_config,
)
from align_jax.interop.safetensors import Checkpoint, SafetensorsError
from align_jax.tree import flatten, nest


def _tensor_map(cfg, mt: str) -> dict:
    """align_jax parameter path -> (HF tensor name, with {} for the layer, or None, kind).

    kind: n_in >= 1: an `x @ W` kernel with n_in input dims (HF stores W.T flattened);
    "flat": a bias (HF flattens heads); "same": same layout.
    """
    p = "model.layers.{}."
    gemma = mt in GEMMA_TYPES
    out = {
        ("embedding",): ("model.embed_tokens.weight", "same"),
        ("final_norm", "scale"): ("model.norm.weight", "same"),
        ("layers", "attn_norm", "scale"): (p + "input_layernorm.weight", "same"),
        ("layers", "mlp_norm", "scale"): (
            p + ("pre_feedforward_layernorm" if gemma else "post_attention_layernorm") + ".weight",
            "same",
        ),
        ("layers", "attn", "o_kernel"): (p + "self_attn.o_proj.weight", 2),
        **{("layers", "attn", f"{n}_kernel"): (p + f"self_attn.{n}_proj.weight", 1) for n in "qkv"},
        **{
            ("layers", "mlp", f"{n}_kernel"): (p + f"mlp.{n}_proj.weight", 1)
            for n in ("gate", "up", "down")
        },
    }
    if not cfg.tie_embeddings:
        out[("lm_head",)] = ("lm_head.weight", 1)
    if cfg.qkv_bias:
        out.update(
            {
                ("layers", "attn", f"{n}_bias"): (p + f"self_attn.{n}_proj.bias", "flat")
                for n in "qkv"
            }
        )
    if cfg.qk_norm:
        out.update(
            {
                ("layers", "attn", f"{n}_norm", "scale"): (p + f"self_attn.{n}_norm.weight", "same")
                for n in "qk"
            }
        )
    if cfg.post_norms:
        out[("layers", "post_attn_norm", "scale")] = (p + "post_attention_layernorm.weight", "same")
        out[("layers", "post_mlp_norm", "scale")] = (
            p + "post_feedforward_layernorm.weight",
            "same",
        )
    return out


def _hf_shape(shape: tuple, kind) -> tuple:
    if kind == "same":
        return tuple(shape)
    if kind == "flat":
        return (math.prod(shape),)
    return (math.prod(shape[kind:]), math.prod(shape[:kind]))


def _to_ours(w: np.ndarray, shape: tuple, kind) -> np.ndarray:
    return w.T.reshape(shape) if isinstance(kind, int) else w.reshape(shape)


def _to_hf(x: np.ndarray, kind) -> np.ndarray:
    if kind == "same":
        return x
    if kind == "flat":
        return x.reshape(-1)
    return x.reshape(math.prod(x.shape[:kind]), -1).T


def load_params(
    hf_dir: str, param_shapes: dict, param_shardings: dict, *, fresh: dict | None = None
):
    """Parameters from a Hugging Face directory, each built in its sharding from the slices
    its devices need. Parameters HF has no tensor for (a reward model's score head, LoRA
    adapters) come from `fresh` when given; otherwise they are an error."""
    hf = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf, os.path.join(hf_dir, "config.json"))
    try:
        ckpt = Checkpoint(hf_dir)
    except SafetensorsError as e:
        raise InteropError(str(e)) from None
    tensors = _tensor_map(cfg, hf["model_type"])
    fresh_values = flatten(fresh) if fresh is not None else {}
    shardings = flatten(param_shardings)
    params: dict = {}  # flat, keyed by path
    for path, shape_struct in flatten(param_shapes).items():
        shape = tuple(shape_struct.shape)
        name = "/".join(path)
        if path not in tensors:
            fresh_value = fresh_values.get(path)
            if fresh_value is None:
                raise InteropError(
                    f"{hf_dir}: parameter '{name}' {shape} has no Hugging Face tensor"
                )
            params[path] = fresh_value
            continue
        template, kind = tensors[path]
        stacked = path[0] == "layers"
        layer_shape = shape[1:] if stacked else shape
        for layer in range(shape[0]) if stacked else (None,):
            hf_name = template.format(layer)
            if hf_name not in ckpt:
                raise InteropError(f"{hf_dir}: tensor '{hf_name}' (for '{name}') is missing")
            want = _hf_shape(layer_shape, kind)
            if ckpt.shape(hf_name) != want:
                raise InteropError(
                    f"{hf_dir}: tensor '{hf_name}' has shape {ckpt.shape(hf_name)} but "
                    f"parameter '{name}' needs {want}"
                )

        def block(
            index,
            template=template,
            kind=kind,
            stacked=stacked,
            shape=shape,
            dtype=shape_struct.dtype,
        ):
            def one(layer):
                w = ckpt.get(template.format(layer))
                return _to_ours(w, shape[1:] if stacked else shape, kind).astype(dtype)

            if not stacked:
                return one(None)[index]
            layers = range(*index[0].indices(shape[0]))
            return np.stack([one(layer)[index[1:]] for layer in layers])

        params[path] = jax.make_array_from_callback(shape, shardings[path], block)
    return nest(params)


def checkpoint_diff(hf_dir: str, param_shapes: dict) -> tuple[list[str], list[str]]:
    """(parameters with no Hugging Face tensor, checkpoint tensors no parameter reads)."""
    hf = read_hf_config(hf_dir)
    tensors = _tensor_map(model_config_from_hf(hf), hf["model_type"])
    added, used = [], set()
    for path, shape in flatten(param_shapes).items():
        if path not in tensors:
            added.append("/".join(path))
            continue
        n = shape.shape[0] if path[0] == "layers" else 1
        used.update(tensors[path][0].format(i) for i in range(n))
    return sorted(added), sorted(set(Checkpoint(hf_dir).keys()) - used)


def hf_tensors(cfg, model_type: str, params: dict, dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(HF tensor name, array in `dtype`) of every tensor of `params`, a `cfg` model."""
    flat = flatten(params)
    for path, (template, kind) in _tensor_map(cfg, model_type).items():
        value = flat[path]
        for layer in range(value.shape[0]) if path[0] == "layers" else (None,):
            # One layer at a time leaves the device: a sharded array gathers only that slice.
            x = np.asarray(jax.device_get(value[layer] if layer is not None else value))
            yield template.format(layer), np.ascontiguousarray(_to_hf(x, kind)).astype(dtype)
