"""Learning-rate schedules and optax chains built from `config.optim` (and `config.init.freeze`).

ReduceLROnPlateau (`config.optim.plateau`) is `scale_by_plateau`, last in the chain: a float32
multiplier kept in the optimizer state (so every checkpoint carries the one its steps used), set
host-side by the loop after an evaluation with `set_plateau_scale` (sw_zoo/train/plateau.py
decides it).

Param selection is by regular expression over '/'-joined param paths such as
'stages_2_0/conv2/kernel' (stage 2, block 0) or 'head/kernel' (see `param_paths`), so recipes can say
"no AGC on the head" or "freeze everything but the head" without code.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

SCHEDULES = ("cosine", "onecycle", "constant")
OPTIMIZERS = ("sgd", "adamw", "lamb")


def make_schedule(optim: Any, total_steps: int, warmup_steps: int) -> optax.Schedule:
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else optim.lr, peak_value=optim.lr,
        warmup_steps=warmup_steps, decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
  if optim.schedule == "onecycle":
    # Warmup is part of the cycle (pct_start), so warmup_* settings do not apply.
    return optax.cosine_onecycle_schedule(
        transition_steps=max(total_steps, 1), peak_value=optim.lr, pct_start=optim.onecycle_pct_start,
        div_factor=optim.onecycle_div_factor, final_div_factor=optim.onecycle_final_div_factor)
  if optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, max(warmup_steps, 1)), optax.constant_schedule(optim.lr)],
        [warmup_steps]) if warmup_steps else optax.constant_schedule(optim.lr)
  raise ValueError(f"config.optim.schedule: {optim.schedule!r} is not one of {SCHEDULES}")


def param_paths(params: Any) -> dict[tuple[str, ...], str]:
  return {path: "/".join(str(p) for p in path) for path in traverse_util.flatten_dict(params)}


def _path_mask(params: Any, predicate) -> Any:
  flat = traverse_util.flatten_dict(params)
  # Inside optax.masked / multi_transform, params outside the mask arrive as MaskedNode (an
  # empty pytree): they stay as they are so the mask keeps the params' tree structure.
  return traverse_util.unflatten_dict({
      path: leaf if isinstance(leaf, optax.MaskedNode) else bool(predicate("/".join(map(str, path)), leaf))
      for path, leaf in flat.items()})


def _matches(pattern: str):
  regex = re.compile(pattern) if pattern else None
  return lambda path: bool(regex and regex.search(path))


def decay_mask_fn(exclude: str = ""):
  """Weight decay on conv/dense kernels only (ndim > 1): never on gains, biases or the skip
  gain; `exclude` (a regex) removes more."""
  excluded = _matches(exclude)
  return lambda params: _path_mask(params, lambda path, leaf: leaf.ndim > 1 and not excluded(path))


def agc_mask_fn(exclude: str):
  """AGC everywhere except params matching `exclude`; the NFNet paper excludes the classifier
  head (clipping the final linear layer hurts and is not needed for stability)."""
  excluded = _matches(exclude)
  return lambda params: _path_mask(params, lambda path, leaf: not excluded(path))


def frozen_mask_fn(freeze: str):
  frozen = _matches(freeze)
  return lambda params: _path_mask(params, lambda path, leaf: frozen(path))


def make_optimizer(optim: Any, schedule: optax.Schedule, *, freeze: str = "",
                   unfreeze_step: int = 0) -> optax.GradientTransformation:
  """AGC (masked) followed by the chosen update rule; params matching `freeze` get zero updates
  and no optimizer state, or, with `unfreeze_step` > 0, zero updates for the first
  `unfreeze_step` updates and normal ones after (a step skipped for a non-finite gradient makes no
  update, so it delays the unfreeze by one step) (their optimizer state is kept from the start, so the moments are warm when they
  start moving). The masks are callables so optax applies them to whatever param tree it is
  initialised with."""
  parts = []
  if optim.agc_clip > 0:
    parts.append(optax.masked(optax.adaptive_grad_clip(optim.agc_clip, eps=1e-3), agc_mask_fn(optim.agc_exclude)))
  decay_mask = decay_mask_fn(optim.wd_exclude)
  if optim.name == "sgd":
    if optim.weight_decay > 0:
      parts.append(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov))
  elif optim.name == "adamw":
    parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
                             mask=decay_mask))
  elif optim.name == "lamb":
    parts.append(optax.lamb(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
                            mask=decay_mask))
  else:
    raise ValueError(f"config.optim.name: {optim.name!r} is not one of {OPTIMIZERS}")
  tx = optax.chain(*parts)
  if freeze and unfreeze_step > 0:
    tx = optax.chain(tx, _zero_until(frozen_mask_fn(freeze), unfreeze_step))
  elif freeze:
    is_frozen = frozen_mask_fn(freeze)
    tx = optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda f: "frozen" if f else "train", is_frozen(params)))
  plateau = optim.get("plateau") or {}
  if (plateau.get("factor") or 0) > 0:
    # Only when enabled, so runs without it keep their optimizer state (and old checkpoints load).
    tx = optax.chain(tx, scale_by_plateau())
  return tx


class PlateauState(NamedTuple):
  plateau_scale: jax.Array  # float32 scalar multiplying every update: the LR multiplier


def scale_by_plateau() -> optax.GradientTransformation:
  """Multiplies the updates by the state's `plateau_scale` (1 at init), which only
  `set_plateau_scale` changes. Last in the chain, after the LR and weight decay are applied, it
  scales exactly as multiplying the LR would (for sgd, adamw and lamb alike: their momentum and
  moments are kept before the LR), and zero updates of frozen params stay zero."""
  def init(params):
    del params
    return PlateauState(plateau_scale=jnp.ones([], jnp.float32))

  def update(updates, state, params=None):
    del params
    updates = jax.tree.map(lambda u: u * state.plateau_scale.astype(u.dtype), updates)
    return updates, state

  return optax.GradientTransformation(init, update)


def _is_plateau(node: Any) -> bool:
  return isinstance(node, PlateauState)


def plateau_scale(opt_state: Any) -> float | None:
  """The LR multiplier held in `opt_state`; None when the optimizer has no `scale_by_plateau`."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(s)]
  return float(jax.device_get(found[0].plateau_scale)) if found else None


def set_plateau_scale(opt_state: Any, scale: float) -> Any:
  """`opt_state` with its LR multiplier set to `scale`, placed in the sharding the old one had
  (the compiled step expects it there); the same value on every process."""
  def replace(node):
    if not _is_plateau(node):
      return node
    old = node.plateau_scale
    value = np.asarray(scale, np.float32)
    if isinstance(old, jax.Array):
      # make_array_from_callback works on any mesh, multi-host included (every process places its
      # own devices' copies of the replicated scalar).
      new = jax.make_array_from_callback((), old.sharding, lambda _: value)
    else:
      new = jnp.asarray(value)
    return PlateauState(plateau_scale=new)

  if not any(_is_plateau(s) for s in jax.tree.leaves(opt_state, is_leaf=_is_plateau)):
    raise ValueError("the optimizer has no plateau scale (config.optim.plateau.factor is 0)")
  return jax.tree.map(replace, opt_state, is_leaf=_is_plateau)


class _CountState(NamedTuple):
  count: jax.Array


def _zero_until(mask_fn, step: int) -> optax.GradientTransformation:
  """Zeroes the updates of the params `mask_fn` marks while fewer than `step` updates were made."""
  def init(params):
    del params
    return _CountState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    frozen = state.count < step
    mask = mask_fn(updates)  # python bools: the choice per leaf is static
    updates = jax.tree.map(lambda u, m: jnp.where(frozen, jnp.zeros_like(u), u) if m else u, updates, mask)
    return updates, _CountState(count=optax.safe_int32_increment(state.count))

  return optax.GradientTransformation(init, update)


def frozen_count(params: Any, freeze: str) -> tuple[int, int]:
  """(frozen params, all params) as element counts: for the log line and for a clear error when
  a freeze regex matches nothing or everything."""
  mask = traverse_util.flatten_dict(frozen_mask_fn(freeze)(params)) if freeze else {}
  flat = traverse_util.flatten_dict(params)
  total = sum(int(v.size) for v in flat.values())
  frozen = sum(int(flat[k].size) for k, m in mask.items() if m)
  return frozen, total
