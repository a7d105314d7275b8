"""Name -> model constructor. A plain function over the ``VARIANTS`` table: nothing registers
itself on import.

A name is a variant key optionally followed by an activation and/or an attention, in the
spelling of SW-CV-ModelZoo's runs: ``'l2'``, ``'l2_silu_eca'``, ``'l0_relu'``,
``'l1_hswish_se'``, ``'nf_resnet50_silu'``. A suffix overrides the variant's own setting; the
l*/nf_resnet* variants have no attention (so ``'l0_relu'`` has none), f* variants have SE
(``create_model('f0', attn='none', ...)`` drops it). Keys may contain '_': the longest key
that prefixes the name wins.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from sw_zoo.models.layers import ACTIVATIONS, ATTENTIONS
from sw_zoo.models.nfnet import VARIANTS, NFNet, NFNetConfig


def list_models() -> list[str]:
  """Variant keys accepted by ``create_model`` (each also takes _<act> / _<attn> suffixes)."""
  return sorted(VARIANTS)


def parse_model_name(name: str) -> tuple[str, dict[str, Any]]:
  """'l2_silu_eca' -> ('l2', {'act': 'silu', 'attn': 'eca'})."""
  base = max((k for k in VARIANTS if name == k or name.startswith(k + "_")), key=len, default=None)
  if base is None:
    raise ValueError(f"unknown model {name!r}: it does not start with one of {list_models()}")
  suffixes = name[len(base):].split("_")[1:]
  fields: dict[str, Any] = {}
  for token in suffixes:
    key = "act" if token in ACTIVATIONS else "attn" if token in ATTENTIONS else None
    if key is None or key in fields:
      raise ValueError(f"unknown model {name!r}: suffix {token!r} must be one activation "
                       f"{sorted(ACTIVATIONS)} and/or one attention {sorted(ATTENTIONS)}")
    fields[key] = token
  return base, fields


def model_config(name: str, *, act: str | None = None, attn: str | None = None, **overrides) -> NFNetConfig:
  """The NFNetConfig for a model name, with ``act``/``attn`` and any config fields overridden."""
  base, fields = parse_model_name(name)
  for key, value in (("act", act), ("attn", attn)):
    if value is None:
      continue
    if key == "attn" and value == "none":  # configs spell "no attention" as a string
      value = None
    if key in fields and fields[key] != value:
      raise ValueError(f"model {name!r} sets {key}={fields[key]!r} but {key}={value!r} was also passed")
    fields[key] = value
  known = {f.name for f in dataclasses.fields(NFNetConfig)}
  for key in overrides:
    if key not in known:
      raise ValueError(f"create_model({name!r}): {key!r} is not an NFNetConfig field; "
                       f"known fields: {sorted(known)}")
  return dataclasses.replace(VARIANTS[base], **fields, **overrides)


def create_model(name: str, *, num_classes: int, act: str | None = None, attn: str | None = None,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, conv_impl: str = "auto",
                 remat: bool = False, **overrides) -> NFNet:
  """Build an (unbound) NFNet linen module.

  ``name``: a ``list_models()`` key, optionally suffixed as in 'l2_silu_eca'. ``act``/``attn``
  set the activation/attention (None: keep the name's or variant's; attn='none': no attention;
  a value contradicting the name's suffix is an error).
  ``overrides`` are NFNetConfig fields (drop_path_rate, drop_rate, head_prior_prob, ...).
  """
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0 (0: no head, embeddings only), got {num_classes}")
  cfg = model_config(name, act=act, attn=attn, **overrides)
  return NFNet(cfg, num_classes=num_classes, dtype=dtype, param_dtype=param_dtype,
               conv_impl=conv_impl, remat=remat)
