"""Orbax checkpoints: one module for saving, resuming and handing parameters between stages.

A checkpoint step directory holds three items:
- `state`: the train state `{"step", "params", "opt_state"}` (StandardSave),
- `data`:  the grain iterator's position (grain.checkpoint.CheckpointSave), so a resumed
  run reads the exact next example,
- `config`: the resolved config as JSON, so a checkpoint says what produced it.

The step's RNG is `fold_in(key(seed), step)`, so restoring `step` restores the RNG too.
Orbax writes a step to a temporary directory and renames it when complete, so a crash or a
refused save never leaves a half-written "latest" checkpoint behind.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from align_jax.tree import flatten


class CheckpointError(ValueError):
    pass


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: dict, data_iter=None, config: dict | None = None) -> None:
        items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: dict, data_iter=None) -> dict:
        """Restores `state` into the shardings of `abstract_state` (and the iterator in place)."""
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except ValueError as e:
            first = " ".join(line.strip() for line in str(e).strip().splitlines()[:4])
            raise CheckpointError(
                f"{self.directory}/{step}: the checkpoint does not match this run's state "
                f"(changed model, optimizer or data config?): {first}"
            ) from e
        return restored["state"]

    def reached_preemption(self, step: int) -> bool:
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree, shardings) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _resolve_state_dir(path: str) -> epath.Path:
    """A workdir, its `checkpoints/` folder, or one step's folder -> that step's `state` item."""
    # Absolute: Orbax reads no metadata through a relative path (it returns None).
    p = epath.Path(os.path.abspath(path))
    if not p.exists():
        raise CheckpointError(f"config.init_from: '{path}' does not exist")
    if (p / "state").exists():
        return p / "state"
    if (p / "checkpoints").exists():
        p = p / "checkpoints"
    steps = sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and (c / "state").exists())
    if not steps:
        raise CheckpointError(
            f"config.init_from: no checkpoint under '{path}' "
            "(expected a workdir, its checkpoints/ folder, or a step folder with a 'state' item)"
        )
    return p / str(steps[-1]) / "state"


# Parameters a later stage may add on top of an earlier stage's model: they start fresh.
NEW_HEADS = ("score_head",)


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
    also be a Hugging Face directory (align_jax.interop.hf reads it), or a LoRA run, whose
    adapters are merged into its base (`load_run`), so a LoRA stage hands off like any other;
    `merge_lora_runs=False` reads such a checkpoint as stored (its adapters and heads).
    """
    from align_jax.interop import hf

    if hf.is_hf_dir(path):
        return hf.load_params(path, param_shapes, param_shardings, fresh=fresh)
    merged = None
    if merge_lora_runs and (run := _lora_run(path)) is not None:
        merged = load_run(run[0], step=run[1])[2]
        state_dir, stored = f"{run[0]} (adapters merged into its base)", flatten(merged)
    else:
        state_dir = _resolve_state_dir(path)
        tree = _stored_tree(state_dir)
        if not isinstance(tree, dict) or "params" not in tree:
            raise CheckpointError(f"config.init_from: '{state_dir}' holds no 'params'")
        stored = flatten(dict(tree["params"]))
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
        target = {"params": abstract_like(target_shapes, target_shardings)}
        restored = ocp.PyTreeCheckpointer().restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
        params = dict(restored["params"])
    for head in {k[0] for k in new}:
        params[head] = fresh[head]
    return params


def checkpoint_diff(path: str, param_shapes: dict) -> tuple[list[str], list[str]]:
    """(parameters the model has that the checkpoint lacks, checkpoint parameters unused)."""
    from align_jax.interop import hf

    if hf.is_hf_dir(path):
        return hf.checkpoint_diff(path, param_shapes)
    if (run := _lora_run(path)) is not None:
        from align_jax import models

        model_cfg = _run_config(run[0]).model
        model_cfg.lora.rank = 0  # what load_params hands over: the merged model
        stored = flatten(models.abstract_params(model_cfg)[1])
    else:
        stored = flatten(dict(_stored_tree(_resolve_state_dir(path))["params"]))
    wanted = flatten(param_shapes)
    return (
        sorted("/".join(k) for k in wanted if k not in stored),
        sorted("/".join(k) for k in stored if k not in wanted),
    )


def _stored_tree(state_dir) -> dict:
    # The item's own handler reads its metadata; a Checkpointer would look for the step-level
    # metadata file inside the item's folder and warn on every stage handoff.
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
    return getattr(meta, "tree", meta)


def load_run(workdir: str, *, step: int | None = None, mesh=None):
    """(config, graphdef, params, mesh) of a finished or running stage's workdir.

    The model is rebuilt from `workdir/config.json` and gets the parameters of the latest
    checkpoint (or `step`), placed on `mesh` (default: every local device, FSDP). A LoRA
    run's adapters are merged into its base (its `init_from`): the result is a plain model
    (`config.model.lora.rank` 0), ready to sample, score or export.
    """
    from align_jax import models, parallel
    from align_jax.models import lora

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
    import json

    import ml_collections

    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return ml_collections.ConfigDict(json.load(f))
    except OSError as e:
        raise CheckpointError(
            f"{workdir}/config.json: cannot read ({e.strerror}); expected a run directory"
        ) from None


def run_and_step(path: str) -> tuple[str, int | None]:
    """(run directory, step or None) of a workdir, its checkpoints/ folder or one step's folder."""
    run, step = os.path.abspath(path), None
    parent = os.path.dirname(run)
    if os.path.basename(parent) == "checkpoints" and os.path.basename(run).isdigit():
        run, step = os.path.dirname(parent), int(os.path.basename(run))
    elif os.path.basename(run) == "checkpoints":
        run = parent
    return run, step


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
