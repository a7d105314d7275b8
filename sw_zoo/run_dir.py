"""The one module that knows a training run's workdir layout.

    <workdir>/
      config.json            the run's config (written once the state is initialised or restored)
      checkpoints/<step>/    Orbax: state/ (params, optimizer, EMA, step, RNG) + data/ (iterator)
      metrics.jsonl          one JSON object per log / eval step
      eval_summary.json      the final validation metrics and throughput
      bundle/                the finished run's model bundle (sw_zoo.inference.bundle)

Everything that reads a run (export, eval, warm starts, pareto, find-missing-tags) resolves paths
and reads params here, so the layout can change in one place.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from sw_zoo import storage

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
EVAL_SUMMARY_FILE = "eval_summary.json"
BUNDLE_DIR = "bundle"


class RunError(FileNotFoundError):
  """A path is not a run, or the run lacks what is needed to read it."""


def is_local(path: str) -> bool:
  return "://" not in path


def absolute(path: str) -> str:
  """An absolute local path (~ expanded); URLs (gs://...) are returned as they are."""
  return os.path.abspath(os.path.expanduser(path)) if is_local(path) else path


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(absolute(workdir), CHECKPOINTS_DIR)


def bundle_dir(workdir: str) -> str:
  return os.path.join(absolute(workdir), BUNDLE_DIR)


def _finished_steps(directory: str) -> list[int]:
  # A step counts once its `state` item exists: Orbax renames a step into place only when complete.
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state")))


# Orbax writes this file into a step last when the store cannot rename (GCS); locally it renames.
_COMMIT_MARKER = "commit_success.txt"


def _finished_remote_steps(url: str) -> list[int]:
  names = set(storage.remote_files(url))
  return sorted(int(d) for d in {n.split("/", 1)[0] for n in names}
                if d.isdigit() and f"{d}/{_COMMIT_MARKER}" in names)


def localize_run(url: str) -> str:
  """A gs:// run (workdir, checkpoints/ or checkpoints/N) mirrored locally with just what reading
  it needs: config.json, eval_summary.json, bundle/ and the one step (the bucket's latest unless
  `url` names one); returns the mirror of that step's directory."""
  url = url.rstrip("/")
  step_url = None
  if storage.isfile(storage.join(url, _COMMIT_MARKER)) and storage.isdir(storage.join(url, "state")):
    step_url = url
  else:
    for directory in (url, storage.join(url, CHECKPOINTS_DIR)):
      steps = _finished_remote_steps(directory) if storage.isdir(directory) else []
      if steps:
        step_url = storage.join(directory, str(steps[-1]))
        break
  if step_url is None:
    raise RunError(f"{url}: no finished checkpoint there (expected a run's workdir, its checkpoints/ directory, "
                   "or checkpoints/<step>)")
  workdir = workdir_of(step_url)
  for name in (CONFIG_FILE, EVAL_SUMMARY_FILE):
    if storage.isfile(storage.join(workdir, name)):
      storage.pull(storage.join(workdir, name))
  if storage.isdir(storage.join(workdir, BUNDLE_DIR)):
    storage.pull(storage.join(workdir, BUNDLE_DIR), exact=True)
  return storage.pull(step_url)


def resolve_step_dir(path: str) -> str:
  """workdir | workdir/checkpoints | workdir/checkpoints/N -> the step directory to read."""
  path = absolute(path)
  if os.path.isdir(os.path.join(path, "state")):
    return path
  for directory in (path, os.path.join(path, CHECKPOINTS_DIR)):
    if os.path.isdir(directory):
      steps = _finished_steps(directory)
      if steps:
        return os.path.join(directory, str(steps[-1]))
  raise RunError(f"{path}: no finished checkpoint there (expected a run's workdir, its checkpoints/ "
                 "directory, or checkpoints/<step>)")


def workdir_of(step_dir: str) -> str:
  """The run's workdir for one of its step directories."""
  parent = os.path.dirname(step_dir)
  return os.path.dirname(parent) if os.path.basename(parent) == CHECKPOINTS_DIR else parent


def read_json(path: str) -> dict[str, Any]:
  try:
    return json.loads(storage.read_text(path))
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunError(f"{path}: missing. The trainer writes the run's config there; without it the model "
                   "cannot be rebuilt (runs from before that change need their config.json recreated "
                   "from the config file they were trained with)")
  return read_json(path)


def read_eval_summary(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, EVAL_SUMMARY_FILE)
  return read_json(path) if os.path.isfile(path) else None


def lookup(config: Mapping[str, Any], dotted: str, where: str, default: Any = KeyError) -> Any:
  """config['a']['b'] for 'a.b'; a missing key is `default`, or a KeyError naming `where`."""
  node: Any = config
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      if default is KeyError:
        raise KeyError(f"{where}: missing key {dotted!r}") from None
      return default
    node = node[part]
  return node


def weights_kind(config: Mapping[str, Any]) -> str:
  """Which weights a run's evaluation and bundle use: 'ema' when it keeps an EMA, else 'params'."""
  return "ema" if float(lookup(config, "optim.ema_decay", "config", 0) or 0) > 0 else "params"


def read_state_arrays(step_dir: str) -> Any:
  """The `state` item of one saved step as host (numpy) arrays.

  Works whatever topology wrote it (a pod's checkpoint on a laptop): arrays are read onto one
  local device, since restoring with the saved shardings needs the saving run's devices; the
  caller re-shards them if it needs to."""
  import jax
  import orbax.checkpoint as ocp

  item = os.path.join(step_dir, "state")
  on_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  checkpointer = ocp.StandardCheckpointer()
  # The step's _CHECKPOINT_METADATA sits one level up, in <step>/, where the CheckpointManager
  # wrote it; reading the `state` item alone makes Orbax warn that it is missing, on every run.
  quiet = _DropMessage("Metadata file does not exist")
  logging.getLogger("absl").addFilter(quiet)
  try:
    saved = checkpointer.metadata(item).item_metadata.tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=on_device), saved)
    return jax.device_get(checkpointer.restore(item, target))
  finally:
    logging.getLogger("absl").removeFilter(quiet)
    checkpointer.close()


class _DropMessage(logging.Filter):
  def __init__(self, text: str):
    super().__init__()
    self.text = text

  def filter(self, record: logging.LogRecord) -> bool:
    return self.text not in record.getMessage()


def read_params(step_dir: str, *, use_ema: bool = True) -> tuple[dict[tuple[str, ...], np.ndarray], str]:
  """({param path: host array}, 'ema' | 'params') of one saved step: the EMA when the run kept
  one and `use_ema`, else the raw params."""
  from flax import traverse_util

  restored = read_state_arrays(step_dir)
  key = "ema_params" if use_ema and restored.get("ema_params") is not None else "params"
  flat = traverse_util.flatten_dict(restored[key])
  return {tuple(map(str, k)): np.asarray(v) for k, v in flat.items()}, "ema" if key == "ema_params" else "params"


def describe(step_dir: str, weights: str) -> str:
  return f"{'ema_params' if weights == 'ema' else 'params'} of {step_dir}"
