"""An earlier stage's parameters for this run: the handoff between stages.

`config.init_from`, a reference model, and the runs that `align_jax.generate`, `score` and
Hugging Face export read may each be
- a run directory (its latest checkpoint), its `checkpoints/` folder, or one step's folder;
- a LoRA run, whose checkpoints hold only adapters (and new heads): the adapters are merged
  into its base (the LoRA run's own `init_from`), so a LoRA stage hands off like any other;
- a Hugging Face directory (`align_jax.interop.hf_weights` reads it);
- a PPO run, whose checkpoints hold `{"policy", "value"}`: the policy is what it hands on.

Whatever mesh wrote a checkpoint, the parameters land in the shardings this run asks for.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from align_jax import models, parallel
from align_jax.checkpoint import (
    CheckpointError,
    DamagedCheckpoint,
    abstract_like,
    resolve_state_dir,
    restore_subtree,
    run_and_step,
    stored_tree,
)
from align_jax.interop import hf_weights
from align_jax.interop.hf_config import is_hf_dir
from align_jax.models import lora
from align_jax.tree import flatten

# Parameters a later stage may add on top of an earlier stage's model: they start fresh.
NEW_HEADS = ("score_head",)
# A run that trained a value model beside the policy (PPO) stores {"policy", "value"}.
POLICY, VALUE = "policy", "value"


def _policy_params(stored_params, wanted: dict) -> tuple[dict, bool]:
    """(the stored parameters a model shaped like `wanted` reads, whether that is the policy
    of a run that stored a value model beside it). Asking for `{"policy", "value"}` reads
    both as stored."""
    stored_params = dict(stored_params)
    if set(stored_params) == {POLICY, VALUE} and set(wanted) != {POLICY, VALUE}:
        return dict(stored_params[POLICY]), True
    return stored_params, False


def load_params(
    path: str,
    param_shapes: dict,
    param_shardings: dict,
    *,
    fresh: dict | None = None,
    merge_lora_runs: bool = True,
) -> dict:
    """Parameters of an earlier stage's checkpoint, placed in this run's shardings.

    Works whatever mesh wrote the checkpoint. Every parameter this model needs must be in
    the checkpoint with the same shape: a mismatch is an error naming the path and shapes.
    The exception is a new head (`NEW_HEADS`, e.g. a reward model's score head on an SFT
    backbone): with `fresh` (newly initialised parameters) given, those come from `fresh`.
    `checkpoint_diff` says what was added and what went unused, for the log. `path` may
    also be a Hugging Face directory, or a LoRA run, whose adapters are merged into its base
    (`load_run`); `merge_lora_runs=False` reads such a checkpoint as stored (its adapters
    and heads).
    """
    try:
        return _load_params(path, param_shapes, param_shardings, fresh, merge_lora_runs)
    except DamagedCheckpoint as e:  # a truncated or corrupted file: name it, in one line
        raise CheckpointError(f"config.init_from: {e}") from e


def _load_params(path, param_shapes, param_shardings, fresh, merge_lora_runs) -> dict:
    if is_hf_dir(path):
        return hf_weights.load_params(path, param_shapes, param_shardings, fresh=fresh)
    merged = None
    if merge_lora_runs and (run := _lora_run(path)) is not None:
        merged = load_run(run[0], step=run[1])[2]
        state_dir, stored = f"{run[0]} (adapters merged into its base)", flatten(merged)
    else:
        state_dir = resolve_state_dir(path)
        tree = stored_tree(state_dir)
        if not isinstance(tree, dict) or "params" not in tree:
            raise CheckpointError(f"config.init_from: '{state_dir}' holds no 'params'")
        stored_params, with_value = _policy_params(tree["params"], param_shapes)
        stored = flatten(stored_params)
    wanted = flatten(param_shapes)
    new = {k for k in wanted if k not in stored and k[0] in NEW_HEADS and fresh is not None}
    for key, shape in wanted.items():
        name = "/".join(key)
        if key in new:
            continue
        if key not in stored:
            raise CheckpointError(
                f"config.init_from: parameter '{name}' {tuple(shape.shape)} is missing from "
                f"'{state_dir}'"
            )
        if tuple(stored[key].shape) != tuple(shape.shape):
            raise CheckpointError(
                f"config.init_from: parameter '{name}' has shape {tuple(stored[key].shape)} in "
                f"'{state_dir}' but the model expects {tuple(shape.shape)}"
            )
    target_shapes = {k: v for k, v in param_shapes.items() if k not in NEW_HEADS or not new}
    target_shardings = {k: param_shardings[k] for k in target_shapes}
    if merged is not None:
        params = jax.device_put({k: merged[k] for k in target_shapes}, target_shardings)
    else:
        target = abstract_like(target_shapes, target_shardings)
        if with_value:
            target = {POLICY: target}
        restored = restore_subtree(state_dir, {"params": target})["params"]
        params = dict(restored[POLICY] if with_value else restored)
    for head in {k[0] for k in new}:
        params[head] = fresh[head]
    return params


def checkpoint_diff(path: str, param_shapes: dict) -> tuple[list[str], list[str]]:
    """(parameters the model has that the checkpoint lacks, checkpoint parameters unused)."""
    if is_hf_dir(path):
        return hf_weights.checkpoint_diff(path, param_shapes)
    if (run := _lora_run(path)) is not None:
        model_cfg = _run_config(run[0]).model
        model_cfg.lora.rank = 0  # what load_params hands over: the merged model
        stored = flatten(models.abstract_params(model_cfg)[1])
    else:
        stored_params = stored_tree(resolve_state_dir(path))["params"]
        stored = flatten(_policy_params(stored_params, param_shapes)[0])
    wanted = flatten(param_shapes)
    return (
        sorted("/".join(k) for k in wanted if k not in stored),
        sorted("/".join(k) for k in stored if k not in wanted),
    )


def load_run(workdir: str, *, step: int | None = None, mesh=None):
    """(config, graphdef, params, mesh) of a finished or running stage's workdir.

    The model is rebuilt from `workdir/config.json` and gets the parameters of the latest
    checkpoint (or `step`), placed on `mesh` (default: every local device, FSDP). A LoRA
    run's adapters are merged into its base (its `init_from`): the result is a plain model
    (`config.model.lora.rank` 0), ready to sample, score or export.
    """
    config = _run_config(workdir)
    mesh = mesh or parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    rules = tuple(tuple(r) for r in config.sharding.rules)
    graphdef, shapes, axes = models.abstract_params(config.model)
    shardings = models.param_shardings(shapes, axes, mesh, rules)
    path = os.path.join(workdir, "checkpoints", str(step)) if step is not None else workdir
    if lora.settings(config.model) is None:
        return config, graphdef, load_params(path, shapes, shardings), mesh
    # The run checkpointed only its adapters and new heads; the base is its init_from.
    (trainable, base), (trainable_sh, base_sh) = (
        lora.split(tree, trainable_heads=NEW_HEADS) for tree in (shapes, shardings)
    )
    params = lora.join(
        load_params(config.init_from, base, base_sh),
        load_params(path, trainable, trainable_sh, merge_lora_runs=False),
    )
    params = lora.merge_lora(params, config.model)
    config.model.lora.rank = 0
    return config, models.abstract_params(config.model)[0], params, mesh


def _run_config(workdir: str):
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return ml_collections.ConfigDict(json.load(f))
    except OSError as e:
        raise CheckpointError(
            f"{workdir}/config.json: cannot read ({e.strerror}); expected a run directory"
        ) from None


def _lora_run(path: str) -> tuple[str, int | None] | None:
    """`run_and_step(path)` when it belongs to a LoRA run, whose checkpoints hold adapters only."""
    run, step = run_and_step(path)
    if not os.path.isdir(os.path.join(run, "checkpoints")):
        return None
    try:
        with open(os.path.join(run, "config.json")) as f:
            rank = json.load(f).get("model", {}).get("lora", {}).get("rank", 0)
    except (OSError, ValueError):
        return None
    return (run, step) if int(rank) > 0 else None
