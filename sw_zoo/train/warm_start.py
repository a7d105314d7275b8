"""Initial weights from another run's checkpoint: the finetune and transfer-learning recipes.

`config.init.checkpoint` names anything `sw_zoo.inference.model_source.load` accepts: a run's
workdir, its checkpoints/ directory (the latest step is used), one step directory
(checkpoints/N), or a model bundle (a run's `bundle/`, an export, or a `load_pretrained` cache
directory). Params are matched to the new model by path:
  * same path and shape: copied (from the source's EMA when it has one and init.use_ema);
  * the head, when `init.new_head` is set or its shape differs (a different tag set): left to
    the new random init;
  * anything else missing or mismatched: an error naming the param and both shapes.
Resolution changes (320 -> 384 finetune) need nothing: NFNet params do not depend on it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flax import traverse_util

from sw_zoo.inference import model_source
from sw_zoo.train.config_check import ConfigError

HEAD_PREFIX = "head"


def read_params(path: str, *, use_ema: bool = True) -> tuple[dict[tuple[str, ...], np.ndarray], str]:
  """Flat {param path: host array} from a checkpoint or a bundle, and a description of what was read."""
  try:
    source = model_source.load(path, use_ema=use_ema)
  except FileNotFoundError as e:
    raise ConfigError(f"config.init.checkpoint={path!r}: {e}") from None
  return source.params, source.described


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
