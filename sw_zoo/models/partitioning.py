"""Logical axis names of the NFNet params and the rules that map them onto a ('data', 'fsdp') mesh.

Every param initialiser in ``layers.py`` / ``nfnet.py`` is wrapped with
``nn.with_logical_partitioning`` when the module's ``logical_axes`` field is True. The default is
False, so ``model.init(...)['params']`` stays a plain dict of arrays for every existing consumer
(trainer, converters, tests); only the abstract init made here carries the boxes:

    abstract = abstract_params(model, (1, 224, 224, 3))            # boxed ShapeDtypeStructs
    shardings = param_shardings(abstract, mesh, FSDP_RULES)        # plain tree of NamedSharding
    params = jax.jit(lambda k: model.init(k, x, train=False)["params"], out_shardings=shardings)(key)

``shardings`` has the structure of the plain params, so it also serves as the params' part of
``in_shardings``/``out_shardings`` of the train step. A model built with ``logical_axes=True``
returns boxed params from ``init``; ``unboxed_init`` strips the boxes either way.

Axis names:
  conv kernels  ('conv_h', 'conv_w', 'conv_in', 'conv_out')  [HWIO; grouped convs: conv_in = Cin/groups]
  conv gain/bias, SE biases  ('conv_out',)
  SE fc1/fc2 kernels  ('conv_in', 'conv_out')
  ECA kernel  ('taps',)        skipinit_gain  ()
  head kernel  ('embed', 'tags')    head bias  ('tags',)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LOGICAL_AXES = ("conv_h", "conv_w", "conv_in", "conv_out", "taps", "embed", "tags")

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


def logical_specs(abstract_params: Any) -> Any:
  """Tree of logical PartitionSpecs (axis names), as ``nn.get_partition_spec``."""
  return nn.get_partition_spec(abstract_params)


def _dummy(image_shape: Sequence[int] | jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  if isinstance(image_shape, jax.ShapeDtypeStruct):
    return image_shape
  return jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)


def abstract_params(model: nn.Module, image_shape: Sequence[int] | jax.ShapeDtypeStruct = (1, 64, 64, 3)) -> Any:
  """Boxed abstract params (``nn.LogicallyPartitioned`` of ShapeDtypeStruct) of ``model``,
  whatever its ``logical_axes`` setting; nothing is computed. Shapes do not depend on the image
  size (any size the stem accepts will do)."""
  annotated = model.clone(logical_axes=True) if hasattr(model, "logical_axes") else model
  x = _dummy(image_shape)
  return jax.eval_shape(lambda x: annotated.init(jax.random.key(0), x, train=False), x)["params"]


def unboxed_init(model: nn.Module, rng: jax.Array, x: jax.Array, **kwargs) -> Any:
  """``model.init(rng, x, train=False)['params']`` with any partitioning boxes removed."""
  return nn.unbox(model.init(rng, x, train=False, **kwargs)["params"])
