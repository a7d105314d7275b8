"""Learning-rate schedules and optax chains built from `config.optim`."""
from __future__ import annotations

from typing import Any

import jax
import optax
from flax import traverse_util

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")


def make_schedule(optim: Any, total_steps: int, warmup_steps: int) -> optax.Schedule:
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else optim.lr, peak_value=optim.lr,
        warmup_steps=warmup_steps, decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
  if optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, max(warmup_steps, 1)), optax.constant_schedule(optim.lr)],
        [warmup_steps]) if warmup_steps else optax.constant_schedule(optim.lr)
  raise ValueError(f"config.optim.schedule: {optim.schedule!r} is not one of {SCHEDULES}")


def _path_mask(params: Any, predicate) -> Any:
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: predicate(path, leaf) for path, leaf in flat.items()})


def decay_mask(params: Any) -> Any:
  """Weight decay on conv/dense kernels only: never on gains, biases or the skip gain."""
  return _path_mask(params, lambda path, leaf: leaf.ndim > 1)


def agc_mask(params: Any) -> Any:
  """AGC everywhere except the classifier head, as in the NFNet paper (clipping the final
  linear layer hurts and is not needed for stability)."""
  return _path_mask(params, lambda path, leaf: "head" not in path)


def make_optimizer(optim: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """AGC (masked) followed by the chosen update rule. The masks are callables so optax applies
  them to whatever param tree it is initialised with."""
  parts = []
  if optim.agc_clip > 0:
    parts.append(optax.masked(optax.adaptive_grad_clip(optim.agc_clip, eps=1e-3), agc_mask))
  if optim.name == "sgd":
    if optim.weight_decay > 0:
      parts.append(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov))
  elif optim.name == "adamw":
    parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay, mask=decay_mask))
  else:
    raise ValueError(f"config.optim.name: {optim.name!r} is not one of {OPTIMIZERS}")
  return optax.chain(*parts)


def learning_rate_at(schedule: optax.Schedule, step: int) -> float:
  return float(jax.device_get(schedule(step)))
