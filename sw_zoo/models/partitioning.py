"""Logical axis names of the NFNet params: what the model declares about its own params.

Every param initialiser in ``layers.py`` / ``nfnet.py`` is wrapped with
``nn.with_logical_partitioning`` when the module's ``logical_axes`` field is True. The default is
False, so ``model.init(...)['params']`` stays a plain dict of arrays for every existing consumer
(trainer, converters, tests); only the abstract init made here carries the boxes:

    abstract = abstract_params(model, (1, 224, 224, 3))                  # boxed ShapeDtypeStructs
    shardings = sw_zoo.sharding.param_shardings(abstract, mesh, rules)  # plain tree of NamedSharding

The rules that map these names onto a mesh live in ``sw_zoo.sharding`` (config data).

Axis names:
  conv kernels  ('conv_h', 'conv_w', 'conv_in', 'conv_out')  [HWIO; grouped convs: conv_in = Cin/groups]
  conv gain/bias, SE biases  ('conv_out',)
  SE fc1/fc2 kernels  ('conv_in', 'conv_out')
  ECA kernel  ('taps',)        skipinit_gain  ()
  head kernel  ('embed', 'tags')    head bias  ('tags',)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

LOGICAL_AXES = ("conv_h", "conv_w", "conv_in", "conv_out", "taps", "embed", "tags")


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
