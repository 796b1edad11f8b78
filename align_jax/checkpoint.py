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

import contextlib
import gc
import os
import re
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils


class CheckpointError(ValueError):
    pass


class DamagedCheckpoint(CheckpointError):
    """A committed step whose files do not read back (truncated, corrupted, missing)."""

    def __init__(self, where: str, item: str, reason: str, step: int | None = None):
        self.step, self.item, self.reason = step, item, reason
        super().__init__(f"{where}: item '{item}' cannot be read: {reason}")


def failure_reason(error: BaseException) -> str:
    """The innermost cause of `error` (a tensorstore read error, say), as one short line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    reason = text
    if len(text) > 320:
        # The head says what failed; the OS error says why ("No space left on device"),
        # wherever tensorstore put it in its message; otherwise the tail.
        os_error = re.search(r"[^:\"]{0,80}\[os_error_code=[^\]]*\]", text)
        reason = f"{text[:150]} ... {(os_error.group(0) if os_error else text[-160:]).strip()}"
    # tensorstore does not always spell the OS error out beside its code: name it.
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        why = os.strerror(int(code.group(1)))
        if why not in reason:
            reason = f"{reason} ({why})"
    return reason


@contextlib.contextmanager
def _quiet_unraisable():
    """Orbax reads arrays in coroutines; when one read fails, the others' errors are
    "ignored" by printing their tracebacks to stderr. The raised error says it all."""
    previous, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        yield
    finally:
        gc.collect()  # the failed reads' leftover coroutines go now, while no one prints
        sys.unraisablehook = previous


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step an async save may still be writing

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The committed steps, oldest first (a half-written save is not one of them)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: dict, data_iter=None, config: dict | None = None) -> None:
        """Saves `step` (in the background with async saves). A save that fails (a full disk)
        is a CheckpointError here or at the next save or `close`; its half-written folder is
        never committed, so a later run resumes from the checkpoint before it."""
        items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        self._wait()
        with self._failed_save(step), _quiet_unraisable():
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._pending = step

    def _wait(self) -> None:
        """Waits for the pending async save to commit (Orbax would wait for it anyway)."""
        if self._pending is not None:
            step, self._pending = self._pending, None
            with self._failed_save(step):
                self._manager.wait_until_finished()

    @contextlib.contextmanager
    def _failed_save(self, step: int):
        """A failed write of `step` (or of the async save still pending) as one line."""
        try:
            yield
        except Exception as e:
            try:
                committed = [s for s in self.all_steps() if s < step]
            except Exception:  # the manager itself is in trouble: say nothing about the rest
                committed = []
            kept = (
                f"checkpoint step {committed[-1]} before it is intact and a run started again "
                "resumes from it"
                if committed
                else "no checkpoint was saved before it"
            )
            raise CheckpointError(
                f"saving checkpoint step {step} in {self.directory} failed: "
                f"{failure_reason(e)}; {kept}"
            ) from e

    def restore(self, step: int, abstract_state: dict, data_iter=None) -> dict:
        """Restores `state` into the shardings of `abstract_state` (and the iterator in place).

        A checkpoint whose arrays differ from `abstract_state` (names, shapes) is a
        CheckpointError: the run's config changed. One whose files do not read back is a
        DamagedCheckpoint naming the step, the item and the reason."""
        where = f"{self.directory}/{step}"
        state_dir = epath.Path(where) / "state"
        try:
            stored = stored_tree(state_dir)
        except DamagedCheckpoint as e:  # unreadable metadata: nothing of this step can be trusted
            raise DamagedCheckpoint(where, "state", e.reason, step) from e
        _check_same_arrays(where, stored, abstract_state)
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state)}
        try:
            with _quiet_unraisable():
                state = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
        except Exception as e:
            raise DamagedCheckpoint(where, "state", failure_reason(e), step) from e
        if data_iter is not None:
            items = {"data": grain.checkpoint.CheckpointRestore(data_iter)}
            try:
                self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:
                raise DamagedCheckpoint(where, "data", failure_reason(e), step) from e
        return state

    def set_aside(self, step: int) -> str:
        """Moves step `step`'s folder, files untouched, to `<directory>.damaged/` (so the run
        can write that step again); returns where it went. Process 0 moves, all wait."""
        target = os.path.join(self.directory + ".damaged", str(step))
        n = 1
        while os.path.exists(target):
            target = os.path.join(self.directory + ".damaged", f"{step}-{n}")
            n += 1
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"align_jax set aside checkpoint {step}")
        self._manager.reload()
        return target

    def reached_preemption(self, step: int) -> bool:
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for an async save to commit, then releases the manager; idempotent."""
        if self._manager is None:
            return
        try:
            self._wait()
        finally:
            manager, self._manager = self._manager, None
            manager.close()


def _array_name(path) -> str:
    """A key path as Orbax names the stored array: `opt_state.0.mu.layers.w`."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts)


def _check_same_arrays(where: str, stored, abstract) -> None:
    """The stored arrays must be the ones `abstract` asks for, by name and shape."""
    have = {m.name: tuple(m.shape) for m in jax.tree.leaves(stored) if hasattr(m, "shape")}
    want = {
        _array_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]
    }
    if have == want:
        return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shared = sorted(set(have) & set(want))
    shapes = [f"{k} {have[k]} != {want[k]}" for k in shared if have[k] != want[k]]
    parts = [
        f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
        for label, names in (("not stored", missing), ("not expected", extra), ("shapes", shapes))
        if names
    ]
    raise CheckpointError(
        f"{where}: the checkpoint does not match this run's state (changed model, optimizer "
        f"or data config?): {'; '.join(parts)}"
    )


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
    try:
        with _quiet_unraisable():
            meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
    except Exception as e:
        raise DamagedCheckpoint(str(state_dir), "metadata", failure_reason(e)) from e
    return getattr(meta, "tree", meta)


def restore_subtree(state_dir, target: dict) -> dict:
    """The part of the stored item that `target` (ShapeDtypeStructs with shardings) names,
    read into those shardings whatever mesh wrote it; the rest of the item is not read.
    The caller checks names and shapes first: a read that fails here is a damaged file."""
    try:
        with _quiet_unraisable():
            return ocp.PyTreeCheckpointer().restore(
                state_dir,
                args=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                ),
            )
    except Exception as e:
        raise DamagedCheckpoint(str(state_dir), "arrays", failure_reason(e)) from e
