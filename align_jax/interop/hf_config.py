"""Hugging Face `config.json` <-> align_jax `config.model`.

Families: Llama (2, 3, 3.1-style `llama3` RoPE scaling), Mistral, Qwen2/2.5 (qkv bias),
Qwen3 (qk-norm) and Gemma 2 / Gemma 3 text models (GeGLU, (1 + w) norms, sandwich norms,
embedding scaling, soft-capping, sliding-window layers, Gemma 3's local RoPE base). The
HF `config.json` becomes an align_jax `config.model` (`model_config_from_hf`); export goes
the other way and checks the round trip (`hf_config_from_model`), so a model that no HF
family can express (say a Llama with qk-norm) is refused instead of silently losing a switch.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

from align_jax.config import model_config

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
# Families with (1 + w) norms, sandwich norms, embedding scaling and soft-capping.
GEMMA_TYPES = ("gemma2", "gemma3_text")
# The fields of config.model that define the architecture (the rest: dtypes, remat, init).
ARCH_FIELDS = (
    "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim",
    "activation", "norm_eps", "norm_offset", "post_norms", "tie_embeddings", "qkv_bias",
    "qk_norm", "embed_scale", "final_logit_softcap", "attn_logit_softcap", "query_scale",
    "rope_theta", "rope_scaling", "sliding_window", "sliding_pattern", "rope_local_theta",
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
    gemma = mt in GEMMA_TYPES
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
    gemma = mt in GEMMA_TYPES
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
