"""Device mesh, the logical-axis rules table, and the one helper that constrains activations.

Arrays name their dimensions with a small logical vocabulary (`batch, length, embed, heads,
kv_heads, head_dim, mlp, vocab, layers`); one rules table (config.sharding.rules) maps those
names to mesh axes (`data, fsdp, tensor`). Parameters carry their names as `axes` metadata;
activations are constrained through `constrain`. Changing the parallelism of a run is a
change to the mesh sizes or the table, never to model code.

The mesh uses Auto axis types (GSPMD propagation): explicit shardings are given at the jit
boundary and at the constraints below; XLA propagates the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, Any]]


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = {name: int(mesh_cfg[name]) for name in MESH_AXES}
    unknown = [k for k in sizes.values() if k == 0 or k < -1]
    if unknown:
        raise ValueError(f"config.mesh: sizes must be positive or -1, got {sizes}")
    free = [name for name, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {sizes}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(
                f"config.mesh: {len(devices)} devices do not divide by the fixed axes {sizes}"
            )
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"config.mesh: {sizes} needs {math.prod(sizes.values())} devices, "
            f"but {len(devices)} are available"
        )
    shape = tuple(sizes[n] for n in MESH_AXES)
    try:
        device_grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # CPU and unusual topologies: plain order is fine.
        device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def _as_tuple(mesh_axes) -> tuple[str, ...]:
    if mesh_axes is None:
        return ()
    if isinstance(mesh_axes, str):
        return (mesh_axes,)
    return tuple(mesh_axes)


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec.

    A mesh axis is used at most once per array (earlier dimensions win), and a dimension is
    only split over the mesh axes whose product divides it, so tiny models and odd vocab
    sizes replicate instead of failing to compile.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name is not None and name not in table:
            raise ValueError(
                f"config.sharding.rules: no rule for logical axis '{name}'; "
                f"rules name {sorted(table)}"
            )
        chosen = []
        for mesh_axis in _as_tuple(table.get(name) if name else None):
            if mesh_axis in used or mesh.shape[mesh_axis] == 1:
                continue
            size = math.prod(mesh.shape[a] for a in chosen) * mesh.shape[mesh_axis]
            if shape is not None and shape[i] % size:
                continue
            chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


_CONTEXT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "align_jax_sharding", default=None
)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Activates `constrain` for code traced inside (model calls, train steps)."""
    token = _CONTEXT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current() -> tuple[Mesh, Rules]:
    """The (mesh, rules) of the active `sharding_context`."""
    ctx = _CONTEXT.get()
    if ctx is None:
        raise RuntimeError("no sharding_context is active")
    return ctx


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """The one helper for activation sharding; a no-op outside `sharding_context`."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    spec = logical_to_spec(axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def named_sharding(axes, shape, mesh: Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# --- host data in a multi-process job -------------------------------------------------------
# Each process holds its own rows of a batch (its prompts, its samples); the global array is
# their concatenation in process order, which is how the data pipelines cut a global batch.


def global_rows(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array whose rows are every process's `local` rows, in process order (one
    process: `local` itself, placed with `sharding`). `sharding` must split the rows across
    the processes, as the batch axes of a multi-host mesh do."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    local = np.asarray(local)
    shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, shape)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array laid out as `global_rows` lays them out (each
    process's rows a block, in process order), whether XLA left its rows split across the
    processes (each holds its block) or replicated (each holds all, and keeps its block)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {}
    for shard in x.addressable_shards:
        if shard.data.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"local_rows: an array of shape {x.shape} is split along a dimension other "
                "than its rows"
            )
        shards.setdefault(shard.index[0].start or 0, shard.data)
    out = np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
    if out.shape[0] == x.shape[0]:  # rows replicated across processes
        n = x.shape[0] // jax.process_count()
        return out[jax.process_index() * n : (jax.process_index() + 1) * n]
    return out


def all_rows(local: np.ndarray) -> np.ndarray:
    """Every process's `local` rows concatenated in process order, on every process (host
    metrics over the global batch). The row counts must agree across processes."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))
