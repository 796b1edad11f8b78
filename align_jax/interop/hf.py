"""Hugging Face interop: import safetensors checkpoints, export align_jax checkpoints.

    python -m align_jax.interop.hf import HF_DIR OUT_DIR     # -> a run dir usable as init_from
    python -m align_jax.interop.hf export CKPT_DIR HF_DIR    # any stage's LM -> transformers

Families: Llama (2, 3, 3.1-style `llama3` RoPE scaling), Mistral, Qwen2/2.5 (qkv bias),
Qwen3 (qk-norm) and Gemma 2 / Gemma 3 text models (GeGLU, (1 + w) norms, sandwich norms,
embedding scaling, soft-capping, sliding-window layers, Gemma 3's local RoPE base). The
HF `config.json` becomes an align_jax `config.model` (`model_config_from_hf`); export goes
the other way and checks the round trip, so a model that no HF family can express (say a
Llama with qk-norm) is refused instead of silently losing a switch.

Weights convert by transposing and reshaping only: align_jax's kernels are `x @ W` with
split-half RoPE, Hugging Face's are `x @ W.T` in the same RoPE layout. Importing onto a
sharded mesh builds every parameter with `jax.make_array_from_callback`, so each host reads
(memory-mapped) only the slices of the layers its devices hold, one tensor at a time; the
whole model is never materialised on one host. `config.init_from` may point at a Hugging
Face directory directly (`align_jax.checkpoint.load_params` comes here for those).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import jax
import ml_collections
import numpy as np

from align_jax.interop.safetensors import Checkpoint, SafetensorsError, write_checkpoint
from align_jax.models import jnp_dtype
from align_jax.tree import flatten, nest

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
_GEMMA = ("gemma2", "gemma3_text")
# The fields of config.model that define the architecture (the rest: dtypes, remat, init).
ARCH_FIELDS = (
    "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim",
    "activation", "norm_eps", "norm_offset", "post_norms", "tie_embeddings", "qkv_bias",
    "qk_norm", "embed_scale", "final_logit_softcap", "attn_logit_softcap", "query_scale",
    "rope_theta", "rope_scaling", "sliding_window", "sliding_pattern", "rope_local_theta",
)  # fmt: skip
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "chat_template.jinja", "generation_config.json",
)  # fmt: skip


class InteropError(ValueError):
    pass


def is_hf_dir(path: str) -> bool:
    """A directory with a Hugging Face `config.json` (it names a `model_type`)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path) as f:
            hf = json.load(f)
    except OSError as e:
        raise InteropError(
            f"{path}: cannot read ({e.strerror}); expected a Hugging Face config"
        ) from None
    except json.JSONDecodeError as e:
        raise InteropError(f"{path}: not valid JSON ({e.msg})") from None
    if hf.get("model_type") not in ARCHITECTURES:
        raise InteropError(
            f"{path}: model_type {hf.get('model_type')!r} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    return hf


# --------------------------------------------------------------------------- configs


def _rope(hf: dict, where: str) -> tuple[float, dict, float]:
    """(rope_theta, rope_scaling fields, local theta or 0) from either config layout:
    transformers 5's `rope_parameters` (per layer type for Gemma 3) or the older
    `rope_theta` / `rope_scaling` / `rope_local_base_freq` keys."""
    params = hf.get("rope_parameters")
    local = None
    if params and "full_attention" in params:
        glob, local = params["full_attention"], params.get("sliding_attention")
    elif params:
        glob = params
    else:
        glob = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 10000.0)}
        if "rope_local_base_freq" in hf:
            local = {"rope_type": "default", "rope_theta": hf["rope_local_base_freq"]}
    kind = glob.get("rope_type", glob.get("type", "default"))
    scaling = {"type": "none", "factor": 1.0}
    if kind == "linear":
        scaling = {"type": "linear", "factor": float(glob["factor"])}
    elif kind == "llama3":
        scaling = {
            "type": "llama3",
            "factor": float(glob["factor"]),
            "low_freq_factor": float(glob["low_freq_factor"]),
            "high_freq_factor": float(glob["high_freq_factor"]),
            "original_max_position": int(glob["original_max_position_embeddings"]),
        }
    elif kind != "default":
        raise InteropError(
            f"{where}: RoPE type {kind!r} is not supported (default, linear, llama3)"
        )
    theta = float(glob.get("rope_theta", 10000.0))
    local_theta = 0.0
    if local is not None:
        if local.get("rope_type", "default") != "default":
            raise InteropError(f"{where}: sliding layers' RoPE must be the default type")
        if float(local["rope_theta"]) != theta or scaling["type"] != "none":
            local_theta = float(local["rope_theta"])
    return theta, scaling, local_theta


def _sliding(hf: dict, where: str) -> tuple[int, int]:
    """(sliding_window, sliding_pattern) from `layer_types`, or the family's default layout."""
    mt, n = hf["model_type"], hf["num_hidden_layers"]
    window = int(hf.get("sliding_window") or 0)
    types = hf.get("layer_types")
    if types is None:
        if not window or (mt.startswith("qwen") and not hf.get("use_sliding_window")):
            return 0, 0
        pattern = {"gemma2": 2, "gemma3_text": 6}.get(mt, 0)
        pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", pattern))
        return window, int(pattern)
    slides = [t == "sliding_attention" for t in types]
    if not any(slides):
        return 0, 0
    if not window:
        raise InteropError(f"{where}: layer_types has sliding layers but sliding_window is unset")
    if all(slides):
        return window, 0
    for pattern in range(2, n + 1):
        if all(s == ((i + 1) % pattern != 0) for i, s in enumerate(slides)):
            return window, pattern
    raise InteropError(
        f"{where}: layer_types {types} is not a pattern align_jax expresses "
        "(every p-th layer global, or every layer sliding)"
    )


def model_config_from_hf(hf: dict, where: str = "config.json", like=None):
    """The align_jax `config.model` of a Hugging Face config dict.

    Architecture fields come from `hf`; the rest (dtypes, remat, init, head) from `like`
    (default: `align_jax.config.model_config()`).
    """
    from align_jax.config import model_config

    mt = hf["model_type"]
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag) and not (flag == "attention_bias" and mt == "qwen2"):
            raise InteropError(f"{where}: {flag}=true is not supported for {mt}")
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
    activations = {"silu": "silu", "gelu_pytorch_tanh": "gelu", "gelu_new": "gelu"}
    if act not in activations:
        raise InteropError(
            f"{where}: activation {act!r} is not supported ({', '.join(activations)})"
        )
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    theta, scaling, local_theta = _rope(hf, where)
    window, pattern = _sliding(hf, where)
    gemma = mt in _GEMMA
    m = model_config() if like is None else ml_collections.ConfigDict(like.to_dict())
    m.update(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        mlp_dim=hf["intermediate_size"],
        activation=activations[act],
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        norm_offset=1.0 if gemma else 0.0,
        post_norms=gemma,
        tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
        qkv_bias=mt == "qwen2",
        qk_norm=mt in ("qwen3", "gemma3_text"),
        embed_scale=gemma,
        final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0) if gemma else 0.0,
        attn_logit_softcap=float(hf.get("attn_logit_softcapping") or 0.0) if gemma else 0.0,
        query_scale=float(hf.get("query_pre_attn_scalar", head_dim)) ** -0.5 if gemma else 0.0,
        rope_theta=theta,
        sliding_window=window,
        sliding_pattern=pattern,
        rope_local_theta=local_theta,
        max_seq_len=int(hf.get("max_position_embeddings", m.max_seq_len)),
    )
    m.rope_scaling.update(scaling)
    return m


def family_of(cfg) -> str:
    """The Hugging Face model_type that expresses `cfg` (checked by `hf_config_from_model`)."""
    if cfg.post_norms or cfg.norm_offset:
        return "gemma3_text" if cfg.qk_norm else "gemma2"
    if cfg.qk_norm:
        return "qwen3"
    if cfg.qkv_bias:
        return "qwen2"
    return "mistral" if cfg.sliding_window else "llama"


def hf_config_from_model(cfg, *, dtype: str = "float32", special_ids: dict | None = None) -> dict:
    """A transformers `config.json` dict for `cfg`; an error if no family expresses it exactly."""
    mt = family_of(cfg)
    gemma = mt in _GEMMA
    hf = {
        "architectures": [ARCHITECTURES[mt]],
        "model_type": mt,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act" if not gemma else "hidden_activation": (
            "silu" if cfg.activation == "silu" else "gelu_pytorch_tanh"
        ),
        "rope_theta": cfg.rope_theta,
        "torch_dtype": dtype,
        **(special_ids or {}),
    }
    s = cfg.rope_scaling
    if s.type == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": s.factor}
    elif s.type == "llama3":
        hf["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position,
        }
    if mt in ("llama", "qwen3"):
        hf["attention_bias"] = False
    if mt == "llama":
        hf["mlp_bias"] = False
    if cfg.sliding_window:
        # Mistral slides in every layer; Gemma alternates by layer_types. (Qwen's sliding
        # layout, by max_window_layers, has no align_jax form and is refused on import.)
        if not gemma and (mt != "mistral" or cfg.sliding_pattern):
            raise InteropError(
                f"config.model: sliding_window with sliding_pattern={cfg.sliding_pattern} "
                f"has no Hugging Face {mt} form"
            )
        hf["sliding_window"] = cfg.sliding_window
        if gemma:
            hf["layer_types"] = [
                "full_attention"
                if cfg.sliding_pattern and (i + 1) % cfg.sliding_pattern == 0
                else "sliding_attention"
                for i in range(cfg.n_layers)
            ]
    elif gemma:
        raise InteropError(f"config.model: a {mt} model needs sliding_window > 0 to export")
    else:
        hf["sliding_window"] = None
    if gemma:
        q = cfg.query_scale or cfg.head_dim**-0.5
        scalar = round(q**-2, 6)
        hf["query_pre_attn_scalar"] = int(scalar) if scalar == int(scalar) else scalar
        hf["final_logit_softcapping"] = cfg.final_logit_softcap or None
        hf["attn_logit_softcapping"] = cfg.attn_logit_softcap or None
        if mt == "gemma3_text":
            hf["rope_local_base_freq"] = cfg.rope_local_theta or cfg.rope_theta
            hf["sliding_window_pattern"] = cfg.sliding_pattern
    back = model_config_from_hf(hf, "export", like=cfg)
    for field in ARCH_FIELDS:
        mine, theirs = cfg[field], back[field]
        if field == "query_scale":  # 0 means 1/sqrt(head_dim)
            mine, theirs = mine or cfg.head_dim**-0.5, theirs or cfg.head_dim**-0.5
        same = (
            mine.to_dict() == theirs.to_dict()
            if field == "rope_scaling"
            else (
                math.isclose(mine, theirs, rel_tol=1e-6)
                if isinstance(mine, float)
                else mine == theirs
            )
        )
        if not same:
            raise InteropError(
                f"config.model.{field}={mine!r} cannot be expressed as a Hugging Face {mt} "
                f"model (it would read back as {theirs!r})"
            )
    return hf


# --------------------------------------------------------------------------- weights


def _tensor_map(cfg, mt: str) -> dict:
    """align_jax parameter path -> (HF tensor name, with {} for the layer, or None, kind).

    kind: n_in >= 1: an `x @ W` kernel with n_in input dims (HF stores W.T flattened);
    "flat": a bias (HF flattens heads); "same": same layout.
    """
    p = "model.layers.{}."
    gemma = mt in _GEMMA
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


def load_hf_params(hf_dir: str, *, mesh=None, rules=None, like=None):
    """(model config, graphdef, params) of a Hugging Face checkpoint on `mesh`
    (default: every local device, FSDP). `like` supplies the non-architecture fields."""
    from align_jax import models, parallel
    from align_jax.config import DEFAULT_RULES

    cfg = model_config_from_hf(read_hf_config(hf_dir), os.path.join(hf_dir, "config.json"), like)
    mesh = mesh or parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    rules = rules or DEFAULT_RULES
    graphdef, shapes, axes = models.abstract_params(cfg)
    params = load_params(hf_dir, shapes, models.param_shardings(shapes, axes, mesh, rules))
    return cfg, graphdef, params


def load_hf(hf_dir: str, *, param_dtype: str | None = None, dtype: str = "float32", mesh=None):
    """A Flax NNX model of a Hugging Face checkpoint: `model(tokens [B, L]) -> logits [B, L, V]`.

    `param_dtype` defaults to the checkpoint's stored dtype; `dtype` is the compute dtype.
    """
    from flax import nnx

    from align_jax.config import model_config

    hf = read_hf_config(hf_dir)
    stored = hf.get("torch_dtype") or hf.get("dtype")
    like = model_config(
        param_dtype=param_dtype
        or (stored if stored in ("float32", "bfloat16", "float16") else "float32"),
        dtype=dtype,
    )
    _, graphdef, params = load_hf_params(hf_dir, mesh=mesh, like=like)
    return nnx.merge(graphdef, params)


# --------------------------------------------------------------------------- CLI verbs


def import_checkpoint(hf_dir: str, out_dir: str) -> str:
    """Writes `out_dir` as an align_jax run directory (config.json + an Orbax checkpoint at
    step 0) that `config.init_from`, `align_jax.generate` and export read like any stage's."""
    from align_jax import checkpoint as ckpt
    from align_jax.config import base_config

    config = base_config()
    config.stage = "import"
    cfg, _, params = load_hf_params(hf_dir, like=config.model)
    config.model = cfg
    config.init_from = os.path.abspath(hf_dir)
    if any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer.model")):
        config.data.tokenizer = _copy_tokenizer(hf_dir, os.path.join(out_dir, "tokenizer"))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
    saver = ckpt.Checkpointer(os.path.join(out_dir, "checkpoints"), keep=1, async_save=False)
    saver.save(0, {"step": np.int32(0), "params": params})
    saver.close()
    return out_dir


def _copy_tokenizer(src: str, dst: str) -> str:
    """Copies the tokenizer files found in `src` to `dst`; returns what Tokenizer.load takes."""
    if os.path.isfile(src):  # a sentencepiece .model or a tokenizer.json
        os.makedirs(dst, exist_ok=True)
        target = "tokenizer.model" if src.endswith(".model") else os.path.basename(src)
        shutil.copy(src, os.path.join(dst, target))
        return os.path.abspath(dst)
    copied = [f for f in _TOKENIZER_FILES if os.path.exists(os.path.join(src, f))]
    os.makedirs(dst, exist_ok=True)
    for f in copied:
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    return os.path.abspath(dst)


def export_checkpoint(
    ckpt_dir: str, hf_dir: str, *, dtype: str | None = None, max_shard_bytes: int = 5 << 30
) -> list[str]:
    """Writes the LM of a run directory (or one of its `checkpoints/<step>` folders) as
    safetensors + config.json (+ the run's tokenizer files) that transformers loads."""
    from align_jax import checkpoint as ckpt

    ckpt_dir, step = ckpt.run_and_step(ckpt_dir)
    config, _, params, _ = ckpt.load_run(ckpt_dir, step=step)
    cfg = config.model
    if cfg.head != "lm":
        raise InteropError(
            f"{ckpt_dir}: a {cfg.head!r}-head model has no Hugging Face causal-LM form"
        )
    dtype = dtype or cfg.param_dtype
    np_dtype = np.dtype(jnp_dtype(dtype))
    special = {}
    tokenizer_path = config.data.get("tokenizer", "")
    if tokenizer_path and os.path.exists(tokenizer_path):
        from align_jax.data.tokenizer import Tokenizer

        tok = Tokenizer.load(tokenizer_path)
        special = {f"{k}_token_id": getattr(tok, f"{k}_id") for k in ("bos", "eos", "pad")}
        special = {k: (v if v is not None and v >= 0 else None) for k, v in special.items()}
    hf = hf_config_from_model(cfg, dtype=dtype, special_ids=special)
    tensors = _tensor_map(cfg, hf["model_type"])
    flat = flatten(params)

    def arrays():
        for path, (template, kind) in tensors.items():
            value = flat[path]
            for layer in range(value.shape[0]) if path[0] == "layers" else (None,):
                # One layer at a time leaves the device: a sharded array gathers only that slice.
                x = np.asarray(jax.device_get(value[layer] if layer is not None else value))
                yield template.format(layer), np.ascontiguousarray(_to_hf(x, kind)).astype(np_dtype)

    files = write_checkpoint(hf_dir, arrays(), max_shard_bytes=max_shard_bytes)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    if tokenizer_path and os.path.exists(tokenizer_path):
        _copy_tokenizer(tokenizer_path, hf_dir)
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    imp = sub.add_parser("import", help="Hugging Face directory -> align_jax run directory")
    imp.add_argument("hf_dir")
    imp.add_argument("out_dir")
    exp = sub.add_parser("export", help="align_jax run directory -> Hugging Face directory")
    exp.add_argument("ckpt_dir", help="a run directory, or its checkpoints/<step> folder")
    exp.add_argument("hf_dir")
    exp.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: params')"
    )
    exp.add_argument("--max_shard_gb", type=float, default=5.0, help="safetensors shard size")
    args = p.parse_args(argv)
    from align_jax.checkpoint import CheckpointError

    try:
        if args.verb == "import":
            out = import_checkpoint(args.hf_dir, args.out_dir)
            print(f"imported {args.hf_dir} -> {out} (use as config.init_from)")
        else:
            files = export_checkpoint(
                args.ckpt_dir,
                args.hf_dir,
                dtype=args.dtype,
                max_shard_bytes=int(args.max_shard_gb * (1 << 30)),
            )
            print(f"exported {args.ckpt_dir} -> {args.hf_dir}: {', '.join(files)}")
    except (InteropError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
