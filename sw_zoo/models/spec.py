"""`ModelSpec`: the `create_model` arguments that rebuild a trained model, in one place.

A run's config (`model.name/act/attn/dtype`) and a bundle's `config.json` (`model`) both describe
a model this way; everything that rebuilds a model from either goes through `ModelSpec.create`,
so the trainer, `sw-zoo eval`, `sw-zoo export` and `Tagger` build exactly the same network.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  num_tags: int
  act: str | None = None
  attn: str | None = None  # None keeps the variant's own attention; configs spell "none" -> None
  dtype: str = "float32"  # compute dtype it was trained with (params are float32)
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # NFNetConfig fields

  def create(self, *, dtype: Any = None, conv_impl: str = "auto", **training_options: Any):
    """The (unbound) linen module. `training_options` (drop_path_rate, remat) only change how the
    model trains, never its params."""
    import jax.numpy as jnp  # jax only when a model is built

    from sw_zoo.models.registry import create_model

    return create_model(self.name, num_classes=self.num_tags, act=self.act, attn=self.attn,
                        dtype=jnp.dtype(dtype or self.dtype), conv_impl=conv_impl,
                        **dict(self.overrides), **training_options)

  @property
  def has_box(self) -> bool:
    """Whether the model has a box head (`heads` in the overrides, see `head_overrides`)."""
    return "box" in (self.overrides.get("heads") or ())

  def to_json(self) -> dict[str, Any]:
    return {"name": self.name, "act": self.act, "attn": self.attn, "dtype": self.dtype,
            "num_tags": self.num_tags, "overrides": dict(self.overrides)}


def heads_of(value: Any) -> tuple[str, ...]:
  """config.model.heads ('tags,box' or a sequence) -> ('tags', 'box')."""
  if isinstance(value, str):
    return tuple(h.strip() for h in value.split(",") if h.strip())
  return tuple(str(h) for h in value)


def head_overrides(model: Mapping[str, Any]) -> dict[str, Any]:
  """The NFNetConfig fields a run config's heads / pooling set (config.model.heads, .pool,
  .pool_heads, .het.*). Only what differs from a plain tags head with mean pooling is listed, so
  such runs (and their bundles' config.json) look exactly as before these options existed."""
  out: dict[str, Any] = {}
  heads = heads_of(model.get("heads", "tags") or "tags")
  if heads != ("tags",):
    out["heads"] = list(heads)
  if (model.get("pool") or "mean") != "mean":
    out["pool"] = model["pool"]
    out["pool_heads"] = int(model.get("pool_heads", 8))
  if "heteroscedastic_tags" in heads:
    het = model.get("het") or {}
    for key, kind in (("rank", int), ("samples", int), ("temperature", float), ("noise_scale", float)):
      if key in het:
        out[f"het_{key}"] = kind(het[key])
  return out


def spec_from_run_config(config: Mapping[str, Any], num_tags: int) -> ModelSpec:
  """The model a training config (a ConfigDict or its config.json) builds, with `num_tags` outputs."""
  model = config["model"]
  attn = model.get("attn") if hasattr(model, "get") else model["attn"]
  return ModelSpec(name=model["name"], num_tags=int(num_tags), act=model.get("act"),
                   attn=None if attn in (None, "none") else attn, dtype=str(model.get("dtype") or "float32"),
                   overrides=head_overrides(model))


def training_options(config: Mapping[str, Any]) -> dict[str, Any]:
  """The `ModelSpec.create(**training_options)` of a training config: how the model trains
  (drop path, rematerialisation), never what it computes, so they stay out of ModelSpec and
  bundles (eval and export build the same network without them)."""
  model = config["model"]
  return {"drop_path_rate": float(model.get("drop_path_rate", 0.0)), "remat": bool(model.get("remat", False))}


# XLA:CPU expands optimization barriers early in its pipeline and CSE then merges the recomputed
# forward pass back into the saved one, so `remat` changes nothing on CPU (measured: temp memory
# identical, or higher). Disabling that pass keeps the barriers, and the recomputation, as
# XLA:GPU/TPU do (they expand the barriers only after scheduling). Passed at compile time.
CPU_REMAT_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def remat_compiler_options(remat: bool, platform: str) -> dict[str, str]:
  """XLA options a step using a `remat=True` model compiles with on `platform`, so the
  rematerialisation survives compilation."""
  return dict(CPU_REMAT_COMPILER_OPTIONS) if remat and platform == "cpu" else {}


def param_shapes(spec: ModelSpec, image_size: int = 64) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'a/b/kernel': (shape, dtype)} of the params `spec` builds, without computing anything."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  model = spec.create(dtype="float32")
  size = min(int(image_size), 64)  # NFNet params do not depend on the input size
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  flat = traverse_util.flatten_dict(variables["params"])
  return {"/".join(map(str, k)): (tuple(v.shape), jnp.dtype(v.dtype).name) for k, v in flat.items()}
