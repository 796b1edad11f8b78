"""Hugging Face checkpoints as align_jax models and runs: load, import, export.

    python -m align_jax.interop.hf import HF_DIR OUT_DIR     # -> a run dir usable as init_from
    python -m align_jax.interop.hf export CKPT_DIR HF_DIR    # any stage's LM -> transformers

`load_hf` gives a Flax NNX model of a Hugging Face directory. Import writes it as an
align_jax run directory; export writes any stage's LM (a LoRA run's with its adapters merged)
as safetensors + config.json that transformers loads. The families and the config mapping
are `align_jax.interop.hf_config`; the tensor names and layouts `align_jax.interop.hf_weights`.
`config.init_from` may also point at a Hugging Face directory directly (`align_jax.loading`
reads it through `hf_weights`).

This module sits above `align_jax.loading` (export reads a run as any stage would), which
is why the mapping it builds on lives in the two modules below it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
from flax import nnx

from align_jax import cli, models, parallel
from align_jax.checkpoint import Checkpointer, CheckpointError, run_and_step
from align_jax.config import DEFAULT_RULES, base_config, model_config
from align_jax.data.tokenizer import Tokenizer
from align_jax.interop import hf_weights
from align_jax.interop.hf_config import (
    InteropError,
    hf_config_from_model,
    model_config_from_hf,
    read_hf_config,
)
from align_jax.interop.safetensors import write_checkpoint
from align_jax.loading import load_run
from align_jax.models import jnp_dtype

_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "chat_template.jinja", "generation_config.json",
)  # fmt: skip


def load_hf_params(hf_dir: str, *, mesh=None, rules=None, like=None):
    """(model config, graphdef, params) of a Hugging Face checkpoint on `mesh`
    (default: every local device, FSDP). `like` supplies the non-architecture fields."""
    cfg = model_config_from_hf(read_hf_config(hf_dir), os.path.join(hf_dir, "config.json"), like)
    mesh = mesh or parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    rules = rules or DEFAULT_RULES
    graphdef, shapes, axes = models.abstract_params(cfg)
    shardings = models.param_shardings(shapes, axes, mesh, rules)
    return cfg, graphdef, hf_weights.load_params(hf_dir, shapes, shardings)


def load_hf(hf_dir: str, *, param_dtype: str | None = None, dtype: str = "float32", mesh=None):
    """A Flax NNX model of a Hugging Face checkpoint: `model(tokens [B, L]) -> logits [B, L, V]`.

    `param_dtype` defaults to the checkpoint's stored dtype; `dtype` is the compute dtype.
    """
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
    config = base_config()
    cfg, _, params = load_hf_params(hf_dir, like=config.model)
    config.model = cfg
    config.init_from = os.path.abspath(hf_dir)
    if any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer.model")):
        config.data.tokenizer = _copy_tokenizer(hf_dir, os.path.join(out_dir, "tokenizer"))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
    saver = Checkpointer(os.path.join(out_dir, "checkpoints"), keep=1, async_save=False)
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
    ckpt_dir, step = run_and_step(ckpt_dir)
    config, _, params, _ = load_run(ckpt_dir, step=step)
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
        tok = Tokenizer.load(tokenizer_path)
        special = {f"{k}_token_id": getattr(tok, f"{k}_id") for k in ("bos", "eos", "pad")}
        special = {k: (v if v is not None and v >= 0 else None) for k, v in special.items()}
    hf = hf_config_from_model(cfg, dtype=dtype, special_ids=special)
    tensors = hf_weights.hf_tensors(cfg, hf["model_type"], params, np_dtype)
    files = write_checkpoint(hf_dir, tensors, max_shard_bytes=max_shard_bytes)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    if tokenizer_path and os.path.exists(tokenizer_path):
        _copy_tokenizer(tokenizer_path, hf_dir)
    return files


def main(argv=None) -> int:
    p = cli.ArgumentParser(
        prog="python -m align_jax.interop.hf", description=__doc__.splitlines()[0]
    )
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
    try:
        args = p.parse_args(argv)
    except cli.UsageError as e:
        return cli.report(e)
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
    except (InteropError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
