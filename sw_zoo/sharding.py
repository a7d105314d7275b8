"""Device mesh, sharding rules and host-local -> global array assembly: everything about where
arrays live, in one module.

One mesh with axes ('data', 'fsdp') serves every scale: on one CPU both axes have size 1, on a pod
'data' spans the slice. The batch is always split over both axes. Params are placed by
logical-axis rules, which are data: `RULE_SETS` names the built-in ones (`config.param_sharding`:
"replicated" = data parallel, "fsdp" = params split over the 'fsdp' axis) and
`config.sharding_rules` can replace them with pairs of (logical axis, mesh axis or None). The
models declare the logical axes of their params (`sw_zoo.models.partitioning`); this module
turns them into shardings for params, optimizer state and EMA.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from jax.tree_util import DictKey

from sw_zoo.models.partitioning import LOGICAL_AXES

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


# ---- Rules: logical param axes -> mesh axes ----------------------------------------------------

LogicalRules = Sequence[tuple[str, Any]]

# Everything replicated: plain data parallelism over both mesh axes.
DATA_PARALLEL_RULES: LogicalRules = tuple((name, None) for name in LOGICAL_AXES)

# FSDP over the 'fsdp' mesh axis (replicated over 'data'): every conv kernel / gain / bias is
# split along its output channels, the head along the tags. Rules are in priority order; a
# dimension the axis does not divide is left whole and the next rule gets a chance (so a head
# with a tag count the axis does not divide is split along 'embed' instead, and a conv whose
# Cout does not divide along Cin).
FSDP_RULES: LogicalRules = (
    ("conv_out", "fsdp"),
    ("tags", "fsdp"),
    ("embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("conv_h", None),
    ("conv_w", None),
    ("taps", None),
)


RULE_SETS: dict[str, LogicalRules] = {"replicated": DATA_PARALLEL_RULES, "fsdp": FSDP_RULES}


def resolve_rules(mode: str, override: Sequence[Sequence[Any]] = ()) -> LogicalRules:
  """The rules of `config.param_sharding` (a RULE_SETS name), or `config.sharding_rules` when that
  is non-empty: pairs (logical axis, mesh axis or None), in priority order."""
  if override:
    rules = tuple((str(name), None if axis in (None, "", "none") else str(axis)) for name, axis in override)
    bad = [name for name, axis in rules if name not in LOGICAL_AXES or (axis is not None and axis not in BATCH_AXES)]
    if bad:
      raise ValueError(f"config.sharding_rules: bad pair(s) for {bad}; logical axes are {LOGICAL_AXES}, "
                       f"mesh axes {BATCH_AXES} (or None)")
    return rules
  if mode not in RULE_SETS:
    raise ValueError(f"config.param_sharding: {mode!r} is not one of {tuple(RULE_SETS)}")
  return RULE_SETS[mode]


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def _mesh_axes_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: LogicalRules) -> P:
  """PartitionSpec for one array: flax's priority rules (``nn.logical_to_mesh_axes``), except
  that a dimension its mesh axes do not divide is replicated and the rules are re-applied
  without it (so its mesh axis can go to another dimension)."""
  names = list(names)
  while True:
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    bad = [i for i, (axes, n) in enumerate(zip(spec, shape)) if n % _mesh_axes_size(mesh, axes)]
    if not bad:
      return spec
    for i in bad:
      names[i] = None


def param_shardings(abstract_params: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Tree of NamedSharding for (boxed) abstract params, with the structure of the unboxed params.

  Leaves boxed by ``nn.with_logical_partitioning`` are placed by ``rules`` over ``mesh``
  (see ``logical_to_spec``); plain leaves are replicated. Rules may name mesh axes the mesh
  lacks only if they are None.
  """
  def one(leaf):
    if _is_box(leaf):
      return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh, rules))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, abstract_params, is_leaf=_is_box)


def _trailing_dict_keys(path: tuple) -> tuple[str, ...]:
  keys = []
  for entry in reversed(path):
    if not isinstance(entry, DictKey):
      break
    keys.append(str(entry.key))
  return tuple(reversed(keys))


def state_shardings(abstract_state: Any, param_sh: Any, mesh: Mesh) -> Any:
  """Shardings for every leaf of `abstract_state` (a TrainState of ShapeDtypeStructs).

  Optax states embed param-shaped trees (momentum, Adam moments) under their own wrappers, so a
  leaf is matched to a param by the trailing run of dict keys in its path (e.g.
  `...mu['stages_0_0']['conv1']['kernel']`); anything unmatched, or whose shape differs
  from its param (e.g. a factored moment), is replicated.
  """
  replicated = NamedSharding(mesh, P())
  by_path = {tuple(str(k.key) for k in path): (sh, leaf_shape)
             for (path, sh), leaf_shape in zip(
                 jax.tree_util.tree_flatten_with_path(param_sh)[0],
                 [x.shape for x in jax.tree.leaves(abstract_state.params)])}

  def one(path, leaf):
    keys = _trailing_dict_keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None:
        sh, shape = hit
        return sh if tuple(leaf.shape) == tuple(shape) else replicated
    return replicated
  return jax.tree_util.tree_map_with_path(one, abstract_state)
