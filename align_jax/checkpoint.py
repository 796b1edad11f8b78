"""Orbax checkpoints of a run: saving, resuming, and reading a stored step back.

A checkpoint step directory holds three items:
- `state`: the train state `{"step", "params", "opt_state"}` (StandardSave),
- `data`:  the grain iterator's position (grain.checkpoint.CheckpointSave), so a resumed
  run reads the exact next example,
- `config`: the resolved config as JSON, so a checkpoint says what produced it.

The step's RNG is `fold_in(key(seed), step)`, so restoring `step` restores the RNG too.
Orbax writes a step to a temporary directory and renames it when complete, so a crash or a
refused save never leaves a half-written "latest" checkpoint behind.

Nothing here knows models: turning a stored step into a model's parameters (another stage's
run, a LoRA run, a Hugging Face directory) is `align_jax.loading`.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


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

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree, shardings) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def run_and_step(path: str) -> tuple[str, int | None]:
    """(run directory, step or None) of a workdir, its checkpoints/ folder or one step's folder."""
    run, step = os.path.abspath(path), None
    parent = os.path.dirname(run)
    if os.path.basename(parent) == "checkpoints" and os.path.basename(run).isdigit():
        run, step = os.path.dirname(parent), int(os.path.basename(run))
    elif os.path.basename(run) == "checkpoints":
        run = parent
    return run, step


def resolve_state_dir(path: str) -> epath.Path:
    """A workdir, its `checkpoints/` folder, or one step's folder -> that step's `state` item
    (the latest step's where `path` names no step)."""
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


def stored_tree(state_dir) -> Any:
    """The stored item's tree of array metadata (shape, dtype), read without its arrays."""
    # The item's own handler reads its metadata; a Checkpointer would look for the step-level
    # metadata file inside the item's folder and warn on every stage handoff.
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
    return getattr(meta, "tree", meta)


def restore_subtree(state_dir, target: dict) -> dict:
    """The part of the stored item that `target` (ShapeDtypeStructs with shardings) names,
    read into those shardings whatever mesh wrote it; the rest of the item is not read."""
    return ocp.PyTreeCheckpointer().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
