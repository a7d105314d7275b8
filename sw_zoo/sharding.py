"""Device mesh, shardings and host-local -> global array assembly.

One mesh with axes ('data', 'fsdp') serves every scale: on one CPU both axes have size 1, on a pod
'data' spans the slice. The batch is always split over both axes; parameters are replicated
unless the logical-axis rules say otherwise (FSDP arrives with the trainer's sharding rules).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(axes: Sequence[tuple[str, int]], num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Turns [('data', -1), ('fsdp', 1)] into concrete sizes; at most one axis may be -1."""
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if set(names) != set(BATCH_AXES) or len(names) != len(BATCH_AXES):
    raise ValueError(f"config.mesh must name exactly the axes {BATCH_AXES}, got {names}")
  wildcards = [i for i, s in enumerate(sizes) if s == -1]
  if len(wildcards) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {list(axes)}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: sizes must be positive or -1, got {list(axes)}")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if wildcards:
    if num_devices % fixed:
      raise ValueError(f"config.mesh {list(axes)}: {num_devices} devices are not divisible by {fixed}")
    sizes[wildcards[0]] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"config.mesh {list(axes)} needs {int(np.prod(sizes))} devices, have {num_devices}")
  return names, tuple(sizes)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  names, sizes = resolve_mesh_shape(axes, len(devices))
  # Auto axes: shardings are propagated by XLA (GSPMD) from the in/out shardings we give jit;
  # this JAX's default (Explicit) would make sharding part of every array's type.
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis; other dimensions whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global jax.Array per key.

  Every process passes only the rows it read itself; the global batch size is the sum over
  processes, so no host ever materialises the whole batch.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
