"""Size and cost of the registered models: exact parameter counts and forward FLOPs per image
(shown by `sw-zoo models`).

FLOPs come from XLA's own cost analysis of the compiled forward pass (batch 1, float32,
``conv_impl='native'``: the einsum lowering of grouped convs adds padding/gather work that is an
artefact of the CPU workaround, not of the model). XLA counts a multiply-add as 2 FLOPs and also
counts element-wise work (activations, standardisation, pooling), so GMACs are reported as
FLOPs / 2; they land within a few percent of timm/fvcore's conv+linear MAC counts.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from flax import linen as nn

from sw_zoo.models.nfnet import VARIANTS, NFNet
from sw_zoo.models.partitioning import abstract_params
from sw_zoo.models.registry import create_model, list_models, parse_model_name


def _abstract_params(model: NFNet, image_size: int) -> Any:
  return nn.unbox(abstract_params(model, (1, image_size, image_size, 3)))


def count_params(model: NFNet) -> int:
  """Exact number of parameters (nothing is allocated)."""
  # Param shapes do not depend on the image size; 64 px fits every stem.
  return sum(math.prod(p.shape) for p in jax.tree.leaves(_abstract_params(model, 64)))


def forward_flops(model: NFNet, image_size: int) -> float:
  """FLOPs of one forward pass (inference mode) on one image_size x image_size image."""
  model = model.clone(conv_impl="native", dtype=jnp.float32, param_dtype=jnp.float32, remat=False)
  params = _abstract_params(model, image_size)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  compiled = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(params, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise RuntimeError(f"XLA cost analysis on {jax.default_backend()} gave no 'flops' entry: {cost!r}")
  return float(cost["flops"])


def model_info(name: str, *, image_size: int = 224, num_classes: int = 1000, act: str | None = None,
               attn: str | None = None, flops: bool = True, **overrides) -> dict[str, Any]:
  """Config summary, exact param count and (``flops=True``) forward cost of a registry name."""
  if image_size < 32:
    raise ValueError(f"image_size must be at least 32 (the network's stride), got {image_size}")
  model = create_model(name, num_classes=num_classes, act=act, attn=attn, **overrides)
  cfg = model.cfg
  info = {
      "name": name, "variant": parse_model_name(name)[0], "act": cfg.act, "attn": cfg.attn,
      "image_size": image_size, "num_classes": num_classes, "num_features": cfg.num_features,
      "params": count_params(model),
  }
  if flops:
    f = forward_flops(model, image_size)
    info.update(flops=f, gflops=f / 1e9, gmacs=f / 2e9)
  return info


def variant_rows() -> list[dict[str, Any]]:
  """One row per VARIANTS key: its geometry (cheap; no tracing)."""
  rows = []
  for key in list_models():
    cfg = VARIANTS[key]
    rows.append({"name": key, "depths": cfg.depths, "channels": cfg.channels, "stem": cfg.stem_type,
                 "group_size": cfg.group_size, "act": cfg.act, "attn": cfg.attn,
                 "num_features": cfg.num_features})
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  cols = ["name", "depths", "channels", "stem", "group_size", "act", "attn", "num_features"]
  cells = [[str(r[c]) for c in cols] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
  line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
  return "\n".join([line(cols), *map(line, cells)])
