"""What `sw-zoo eval` evaluates: a training run's checkpoint or a model bundle, resolved to the
model's construction arguments, its params (host arrays) and the run's eval settings.

Accepted paths:
  * a run's workdir (latest checkpoint), its `checkpoints/` directory, or `checkpoints/<step>`:
    the model comes from the run's `config.json` (written by the trainer at start), params from
    the Orbax `state` item (the EMA when the run kept one);
  * a model bundle directory (`sw_zoo.bundle`: config.json + params.msgpack + selected_tags.csv),
    read and verified by `sw_zoo.bundle.read_bundle`; eval updates its `thresholds` key.
A checkpoint's run may hold its bundle (`<workdir>/bundle`, written by the trainer or `sw-zoo
export`); when that bundle says it was made from the same step and weights, eval updates its
thresholds too.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from flax import traverse_util

from sw_zoo import bundle as bundle_lib
from sw_zoo.data import vocab as vocab_lib


@dataclasses.dataclass
class ModelSource:
  kind: str  # "checkpoint" | "bundle"
  root: str  # the workdir or the bundle directory: where default outputs go
  described: str  # what was read, for the log
  model: dict[str, Any]  # create_model arguments: name, act, attn, dtype, overrides
  image_size: int
  params: dict[tuple[str, ...], np.ndarray]  # flat {param path: array}
  settings: dict[str, Any]  # defaults from the run: data_dir, threshold, batch_size, num_threads, prefetch
  tags: vocab_lib.TagVocab | None = None  # a bundle's own vocabulary (the model's outputs)
  step: int | None = None
  step_given: bool = False  # the path named one checkpoint step (not "the latest")
  train_summary: dict[str, Any] | None = None  # the run's own eval_summary.json
  bundle_config: str | None = None  # a bundle's config.json

  @property
  def num_outputs(self) -> int:
    heads = [v.shape[-1] for k, v in self.params.items() if k[0] == "head" and k[-1] == "kernel"]
    if len(heads) != 1:
      raise ValueError(f"{self.described}: expected one head/.../kernel param, found {len(heads)}")
    return int(heads[0])

  def nested_params(self) -> dict[str, Any]:
    return traverse_util.unflatten_dict(self.params)


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: not valid JSON ({err})") from None


def _lookup(config: dict[str, Any], dotted: str, where: str, default: Any = KeyError) -> Any:
  node: Any = config
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      if default is KeyError:
        raise KeyError(f"{where}: missing key {dotted!r}") from None
      return default
    node = node[part]
  return node


def load(path: str, *, use_ema: bool = True) -> ModelSource:
  """Resolves `path` (see the module docstring); errors say what was expected there."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such directory (expected a run's workdir, a checkpoint step "
                            "directory or a model bundle)")
  if bundle_lib.is_bundle(path):
    return _load_bundle(path)
  return _load_checkpoint(path, use_ema=use_ema)


def _load_bundle(path: str) -> ModelSource:
  loaded = bundle_lib.read_bundle(path)
  spec = loaded.spec
  default = loaded.thresholds.get("default")
  return ModelSource(
      kind="bundle", root=loaded.path, described=f"bundle {loaded.path}",
      model={"name": spec.name, "act": spec.act, "attn": spec.attn, "dtype": spec.dtype,
             "overrides": dict(spec.overrides)},
      image_size=loaded.image_size,
      params={tuple(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(loaded.params).items()},
      settings={"threshold": float(default) if isinstance(default, (int, float)) else None},
      tags=loaded.tags, bundle_config=os.path.join(loaded.path, bundle_lib.CONFIG_FILE))


def _load_checkpoint(path: str, *, use_ema: bool) -> ModelSource:
  # Imported here: the trainer (and Orbax) are only needed for this kind of source.
  from sw_zoo.train import warm_start

  try:
    step_dir = warm_start.resolve_step_dir(path)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path}: no finished checkpoint and no bundle there (expected a run's workdir, its "
        "checkpoints/ directory, checkpoints/<step>, or a model bundle)") from None
  checkpoints_dir = os.path.dirname(step_dir)
  workdir = os.path.dirname(checkpoints_dir) if os.path.basename(checkpoints_dir) == "checkpoints" else checkpoints_dir
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path}: missing. The trainer writes the run's config there at start; "
                            "without it the model cannot be rebuilt (runs from before that change need "
                            "their config.json recreated from the config file they were trained with)")
  config = _read_json(config_path)
  params, described = warm_start.read_params(step_dir, use_ema=use_ema)
  model = {"name": _lookup(config, "model.name", config_path),
           "act": _lookup(config, "model.act", config_path, None),
           "attn": _lookup(config, "model.attn", config_path, None),
           "dtype": _lookup(config, "model.dtype", config_path, "float32"), "overrides": {}}
  eval_batch = int(_lookup(config, "eval.batch_size", config_path, 0) or 0)
  settings = {
      "data_dir": _lookup(config, "data.dir", config_path, None),
      "threshold": _lookup(config, "eval.threshold", config_path, None),
      "batch_size": eval_batch or _lookup(config, "batch_size", config_path, None),
      "num_threads": _lookup(config, "data.num_threads", config_path, None),
      "prefetch": _lookup(config, "data.prefetch", config_path, None),
  }
  summary_path = os.path.join(workdir, "eval_summary.json")
  step = int(os.path.basename(step_dir))
  return ModelSource(
      kind="checkpoint", root=workdir, described=described, model=model,
      image_size=int(_lookup(config, "data.image_size", config_path)), params=params,
      settings=settings, step=step, step_given=os.path.abspath(path) == step_dir,
      train_summary=_read_json(summary_path) if os.path.exists(summary_path) else None,
      bundle_config=_run_bundle_config(workdir, step, "ema" if described.startswith("ema_params") else "params"))


def _run_bundle_config(workdir: str, step: int, weights: str) -> str | None:
  """config.json of `<workdir>/bundle` if it holds exactly these weights (its `source` says so)."""
  from sw_zoo.export import BUNDLE_DIRNAME

  directory = os.path.join(workdir, BUNDLE_DIRNAME)
  if not bundle_lib.is_bundle(directory):
    return None
  config_path = os.path.join(directory, bundle_lib.CONFIG_FILE)
  made_from = _read_json(config_path).get("source") or {}
  same = (made_from.get("workdir") == workdir and made_from.get("step") == step
          and made_from.get("weights") == weights)
  return config_path if same else None
