"""Initial weights from another run's checkpoint: the finetune and transfer-learning recipes.

`config.init.checkpoint` names anything `sw_zoo.inference.model_source.load` accepts: a run's
workdir, its checkpoints/ directory (the latest step is used), one step directory
(checkpoints/N), a model bundle (a run's `bundle/`, an export, or a `load_pretrained` cache
directory), or `hf-hub:owner/repo[@revision]` holding a bundle. It may also name timm weights:
  * `hf-hub:timm/eca_nfnet_l0.ra2_in1k` (any timm NFNet / NF-ResNet repo; `inference.hub`
    downloads it once into the sw_zoo cache), or a local directory holding such a repo's
    config.json + model.safetensors;
  * a local timm `.safetensors` file: its architecture from a config.json beside it, else the
    one config.model builds.
timm weights are converted by `models.convert_timm` without their ImageNet head; config.model
must build the network they name (an error says which model/act/attn to set).
Params are matched to the new model by path:
  * same path and shape: copied (from the source's EMA when it has one and init.use_ema);
  * the head, when `init.new_head` is set or its shape differs (a different tag set): left to
    the new random init;
  * anything else missing or mismatched: an error naming the param and both shapes.
Resolution changes (320 -> 384 finetune) need nothing: NFNet params do not depend on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from flax import traverse_util

from sw_zoo import run_dir
from sw_zoo.inference import hub, model_source
from sw_zoo.models import convert_timm
from sw_zoo.models.registry import model_config
from sw_zoo.models.spec import ModelSpec
from sw_zoo.train.config_check import ConfigError

HEAD_PREFIX = "head"


def read_params(path: str, *, use_ema: bool = True,
                model: ModelSpec | None = None) -> tuple[dict[tuple[str, ...], np.ndarray], str]:
  """Flat {param path: host array} from a checkpoint, a bundle or timm weights, and a description
  of what was read. `model`: the network being initialised (config.model), which timm weights
  must fit and which names the architecture of a bare .safetensors file."""
  what = f"config.init.checkpoint={path!r}"
  if hub.is_hub_name(path):
    try:
      fetched = hub.fetch(path)
    except (FileNotFoundError, ValueError) as e:  # no such repo / revision, not a model we can build
      raise ConfigError(f"config.init.checkpoint: {e}") from None  # hub's messages start with the name
    if fetched.kind == "timm":
      return _timm_params(os.path.join(fetched.path, hub.TIMM_WEIGHTS), fetched.architecture, model, what)
    path = fetched.path
  else:
    timm_weights, architecture = _local_timm(path)
    if timm_weights:
      return _timm_params(timm_weights, architecture, model, what)
  try:
    source = model_source.load(path, use_ema=use_ema)
  except FileNotFoundError as e:
    raise ConfigError(f"{what}: {e}") from None
  return source.params, source.described


def _local_timm(path: str) -> tuple[str | None, str | None]:
  """(weights file, architecture or None) when `path` is a timm .safetensors file or a directory
  holding a timm repo's config.json + model.safetensors; (None, None) otherwise."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    weights = os.path.join(path, hub.TIMM_WEIGHTS)
    architecture = _architecture_beside(weights)
    return (weights, architecture) if architecture and os.path.isfile(weights) else (None, None)
  if path.endswith(".safetensors") and os.path.isfile(path):
    return path, _architecture_beside(path)
  return None, None


def _architecture_beside(weights: str) -> str | None:
  """The timm `architecture` of the config.json next to `weights`, if there is one."""
  config = os.path.join(os.path.dirname(weights), hub.CONFIG_FILE)
  if not os.path.isfile(config):
    return None
  try:
    with open(config, encoding="utf-8") as f:
      architecture = json.load(f).get("architecture")
  except (OSError, ValueError, AttributeError):
    return None  # not a timm config.json: fall back to config.model
  return architecture if isinstance(architecture, str) else None


def _timm_params(weights: str, architecture: str | None, model: ModelSpec | None,
                 what: str) -> tuple[dict[tuple[str, ...], np.ndarray], str]:
  """timm weights as our flat params, without the head: timm's classes (ImageNet) are never our
  tags, and a head left out cannot be copied by accident when the tag count happens to match."""
  if architecture is not None:
    try:
      name, kwargs = convert_timm.sw_zoo_model(architecture, where=what)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if model is not None:
      _check_same_network(architecture, name, kwargs, model, what)
  elif model is not None:
    name = model.name
    kwargs = {"act": model.act, "attn": model.attn, **model.overrides}
  else:
    raise ConfigError(f"{what}: no config.json with a timm 'architecture' beside it, and no model given")
  try:
    params = convert_timm.load_timm_checkpoint(weights, name, num_classes=0, **kwargs)
  except ValueError as e:
    raise ConfigError(f"{what}: {e}") from None
  flat = {tuple(map(str, k)): v for k, v in traverse_util.flatten_dict(params).items()}
  return flat, f"timm {architecture or name} weights {weights} (without their head)"


def _check_same_network(architecture: str, name: str, kwargs: dict[str, Any], model: ModelSpec, what: str) -> None:
  """ConfigError unless config.model builds the network timm's `architecture` is; the message
  gives the settings that would (an activation differs without any shape differing, so
  match_params alone would not notice)."""
  theirs = model_config(name, **kwargs)
  ours = model_config(model.name, act=model.act, attn=model.attn, **model.overrides)
  if theirs == ours:
    return
  differ = [f"{f.name}: timm {getattr(theirs, f.name)!r}, config.model {getattr(ours, f.name)!r}"
            for f in dataclasses.fields(theirs) if getattr(theirs, f.name) != getattr(ours, f.name)]
  fix = f"--config.model.name={name} --config.model.act={theirs.act} --config.model.attn={theirs.attn or 'none'}"
  extra = {k: v for k, v in kwargs.items() if k not in ("act", "attn")}
  raise ConfigError(f"{what} holds timm {architecture}, which is sw_zoo model {name!r}"
                    + "".join(f" {k}={v!r}" for k, v in kwargs.items())
                    + f"; config.model builds a different network ({'; '.join(differ)}). Set {fix}"
                    + (f" (and NFNetConfig fields {extra}, which config.model cannot set)" if extra else ""))


def match_params(source: dict[tuple[str, ...], np.ndarray], target_params: Any, *,
                 new_head: bool) -> tuple[dict[tuple[str, ...], np.ndarray], list[str]]:
  """The source arrays to copy into a model whose (abstract) params are `target_params`, and
  the paths left to the random init. Raises ValueError on a mismatch outside the head."""
  copied: dict[tuple[str, ...], np.ndarray] = {}
  fresh: list[str] = []
  problems: list[str] = []
  for path, leaf in traverse_util.flatten_dict(target_params).items():
    path = tuple(map(str, path))
    name = "/".join(path)
    in_head = path[0] == HEAD_PREFIX
    src = source.get(path)
    if in_head and (new_head or src is None or src.shape != tuple(leaf.shape)):
      fresh.append(name)
    elif src is None:
      problems.append(f"{name}: missing from the checkpoint")
    elif src.shape != tuple(leaf.shape):
      problems.append(f"{name}: checkpoint has shape {src.shape}, the model needs {tuple(leaf.shape)}")
    else:
      copied[path] = src.astype(leaf.dtype)
  if problems:
    raise ValueError("config.init.checkpoint does not fit config.model (is it the same model variant?):\n  "
                     + "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
  return copied, fresh


def source_model(path: str, *, use_ema: bool = True) -> tuple[str, str | None, str | None]:
  """(model name, act, attn) of the network `config.init.checkpoint` holds, so a recipe can build
  the model the weights fit instead of asking the user to spell it. Fetches a Hub name (once,
  into the cache the warm start then reads)."""
  what = f"config.init.checkpoint={path!r}"
  architecture, local = None, path
  if hub.is_hub_name(path):
    try:
      fetched = hub.fetch(path)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"config.init.checkpoint: {e}") from None
    architecture, local = fetched.architecture, fetched.path
  else:
    weights, architecture = _local_timm(path)
    if weights and not architecture:
      raise ConfigError(f"{what}: a bare .safetensors file names no architecture; set config.model.name/act/attn")
  if architecture is not None:
    try:
      name, kwargs = convert_timm.sw_zoo_model(architecture, where=what)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    cfg = model_config(name, **kwargs)
    return name, cfg.act, cfg.attn
  # A run's or bundle's config.json names its model: no need to load the weights for that.
  config_path = os.path.join(os.path.abspath(os.path.expanduser(local)), "config.json")
  model = None
  if os.path.isfile(config_path):
    try:
      model = run_dir.read_json(config_path).get("model")
    except (OSError, ValueError, AttributeError):
      model = None
  if isinstance(model, dict) and isinstance(model.get("name"), str):
    name, act, attn = model["name"], model.get("act"), model.get("attn")
  else:
    try:
      spec = model_source.load(path, use_ema=use_ema).spec
    except FileNotFoundError as e:
      raise ConfigError(f"{what}: {e}") from None
    name, act, attn = spec.name, spec.act, spec.attn
  cfg = model_config(name, act=act, attn=None if attn in (None, "none") else attn)
  return name, cfg.act, cfg.attn
