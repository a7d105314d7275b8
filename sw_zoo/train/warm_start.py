"""Initial weights from another run's checkpoint: the finetune and transfer-learning recipes.

`config.init.checkpoint` names a run's workdir, its checkpoints/ directory (the latest step is
used), one step directory (checkpoints/N), or a model bundle (a run's `bundle/`, an export, or
a `load_pretrained` cache directory). Params are matched to the new model by path:
  * same path and shape: copied (from the source's EMA when it has one and init.use_ema);
  * the head, when `init.new_head` is set or its shape differs (a different tag set): left to
    the new random init;
  * anything else missing or mismatched: an error naming the param and both shapes.
Resolution changes (320 -> 384 finetune) need nothing: NFNet params do not depend on it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from flax import traverse_util

from sw_zoo import bundle as bundle_lib
from sw_zoo.train import checkpointing

HEAD_PREFIX = "head"


def resolve_step_dir(path: str) -> str:
  """workdir | workdir/checkpoints | workdir/checkpoints/N -> the step directory to read."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "state")):
    return path
  candidates = [path, os.path.join(path, "checkpoints")]
  for directory in candidates:
    if not os.path.isdir(directory):
      continue
    steps = sorted(int(d) for d in os.listdir(directory)
                   if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state")))
    if steps:
      return os.path.join(directory, str(steps[-1]))
  raise FileNotFoundError(
      f"config.init.checkpoint={path!r}: no finished checkpoint there (expected a run's workdir, its "
      "checkpoints/ directory, or checkpoints/<step>)")


def read_params(path: str, *, use_ema: bool = True) -> tuple[dict[tuple[str, ...], np.ndarray], str]:
  """Flat {param path: host array} from a checkpoint or a bundle, and a description of what was read."""
  if bundle_lib.is_bundle(os.path.expanduser(path)):
    path = os.path.abspath(os.path.expanduser(path))
    return bundle_lib.read_params_flat(path), f"params of bundle {path}"
  step_dir = resolve_step_dir(path)
  restored = checkpointing.read_state_arrays(step_dir)
  key = "ema_params" if use_ema and restored.get("ema_params") is not None else "params"
  flat = traverse_util.flatten_dict(restored[key])
  return {tuple(map(str, k)): np.asarray(v) for k, v in flat.items()}, f"{key} of {step_dir}"


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
