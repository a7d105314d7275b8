"""Shardings of the whole train state from the params' logical-axis rules.

`config.param_sharding` picks the rules: "replicated" (data parallel) or "fsdp" (params split
over the mesh's 'fsdp' axis, sw_zoo.models.FSDP_RULES). Optimizer moments and the EMA are
sharded exactly like the params they belong to; counters and the RNG are replicated.
"""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.tree_util import DictKey

from sw_zoo.models import DATA_PARALLEL_RULES, FSDP_RULES, abstract_params, param_shardings

RULES = {"replicated": DATA_PARALLEL_RULES, "fsdp": FSDP_RULES}


def params_shardings(model: Any, mesh: Mesh, mode: str) -> Any:
  """NamedSharding per param (plain params' tree structure) under the `mode` rules."""
  if mode not in RULES:
    raise ValueError(f"config.param_sharding: {mode!r} is not one of {tuple(RULES)}")
  return param_shardings(abstract_params(model), mesh, RULES[mode])


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
