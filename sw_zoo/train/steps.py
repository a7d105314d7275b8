"""Pure train-step functions (init and one update). The loop jits them with shardings; nothing
here knows about hosts or files (the only device fact is an optional sharding for micro-batches).
Evaluation's forward pass is `sw_zoo.evaluation.evaluator.predict_probs`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from sw_zoo.train import losses
from sw_zoo.train.state import TrainState

# Stochastic layers in sw_zoo.models draw from these streams.
RNG_STREAMS = ("dropout", "drop_path", "heteroscedastic")


def init_state(model: Any, tx: optax.GradientTransformation, *, image_size: int, seed: int,
               ema: bool = False, params_override: dict[tuple[str, ...], Any] | None = None,
               loss_params: Any = None, loss_tx: optax.GradientTransformation | None = None) -> TrainState:
  """A fresh state. `params_override` ({param path: array}, from a finetune / transfer source)
  replaces those leaves of the random init; the rest (e.g. a new head) stay random. `loss_params`
  (the adaptive robust loss's latents) are trained by `loss_tx`."""
  key = jax.random.key(seed)
  init_key, state_key = jax.random.split(key)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init({"params": init_key}, dummy, train=False)["params"]
  if params_override:
    flat = traverse_util.flatten_dict(params)
    params = traverse_util.unflatten_dict({k: params_override.get(tuple(map(str, k)), v) for k, v in flat.items()})
  loss_opt_state = None
  if loss_params is not None:
    if loss_tx is None:
      raise ValueError("loss_params need a loss_tx to train them")
    loss_opt_state = loss_tx.init(loss_params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(state_key),
                    ema_params=jax.tree.map(jnp.copy, params) if ema else None,
                    skipped_steps=jnp.zeros((), jnp.int32), loss_params=loss_params,
                    loss_opt_state=loss_opt_state)


def ema_decay_at(decay: float, step: jax.Array, warmup: bool) -> jax.Array:
  """With warmup the decay starts small and approaches `decay` as (1 + t) / (10 + t), so the
  average is not dominated by the random init in short runs (TF's num_updates rule)."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def _all_finite(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:  # e.g. no loss params
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


TARGET_KEYS = ("labels", "box", "box_mask")  # what a batch holds besides the images


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Any, tx: optax.GradientTransformation,
               loss_fn: Callable, schedule: optax.Schedule, mix_fn: Callable | None = None,
               tag_weights: jax.Array | None = None, accum_steps: int = 1,
               micro_batch_sharding: Any = None, ema_decay: float = 0.0, ema_warmup: bool = True,
               skip_nonfinite: bool = True, box_loss_fn: Callable | None = None, box_weight: float = 0.0,
               loss_tx: optax.GradientTransformation | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update over the global batch.

  `mix_fn(images, labels, key)` (MixUp/CutMix) runs on device on the whole batch; `tag_weights`
  [T] rescales each tag's loss. With `accum_steps` k > 1 the batch is split into k micro-batches
  whose gradients are averaged (a lax.scan, so activations of one micro-batch live at a time);
  micro-batch j takes rows j, j + k, ..., which keeps each one spread over every device.
  With `skip_nonfinite`, a step whose loss or gradients hold NaN/Inf leaves params, optimizer
  state and EMA untouched and is counted in `skipped_steps`; the step counter still advances so
  the data and the schedule move on.
  With `box_loss_fn(pred [B, 4], target [B, 4]) -> [B]` (a model with a box head, batches with
  'box' and 'box_mask'), each image adds box_weight x its box loss where it has a box. The loss's
  own params (`state.loss_params`, the adaptive robust loss) are trained by `loss_tx`.
  """
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  mix_key, micro_key = jax.random.split(step_key)
  images = batch["image"].astype(jnp.float32)
  targets = {k: batch[k] for k in TARGET_KEYS if k in batch}
  if mix_fn is not None:
    images, targets["labels"] = mix_fn(images, targets["labels"], mix_key)
  with_box = box_loss_fn is not None

  def loss_and_grad(params, loss_params, images, targets, key):
    rngs = dict(zip(RNG_STREAMS, jax.random.split(key, len(RNG_STREAMS))))

    def loss_of(p, lp):
      out = model.apply({"params": p}, images, train=True, rngs=rngs, return_features=with_box)
      logits = out["logits"] if with_box else out
      extra = () if lp is None else (lp,)
      tag_loss = loss_fn(logits, targets["labels"], tag_weights, *extra)
      aux = {"tag_loss": tag_loss.mean()}
      total = tag_loss
      if with_box:
        box_loss = box_loss_fn(out["box"], targets["box"]) * targets["box_mask"]
        # Logged as the mean over the images that have a box (comparable at any box density); the
        # loss itself averages over the batch like the tag loss, so box-less images weigh nothing.
        aux["box_loss"] = box_loss.sum() / jnp.maximum(targets["box_mask"].sum(), 1.0)
        total = total + box_weight * box_loss
      return total.mean(), aux
    (loss, aux), grads = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(params, loss_params)
    return loss, aux, grads

  if accum_steps == 1:
    loss, aux, (grads, loss_grads) = loss_and_grad(state.params, state.loss_params, images, targets, micro_key)
  else:
    def split(x):
      x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
      return x if micro_batch_sharding is None else jax.lax.with_sharding_constraint(x, micro_batch_sharding)

    def body(carry, micro):
      index, micro_images, micro_targets = micro
      loss, aux, grads = loss_and_grad(state.params, state.loss_params, micro_images, micro_targets,
                                       jax.random.fold_in(micro_key, index))
      return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, (state.params, state.loss_params))
    aux0 = {"tag_loss": jnp.zeros((), jnp.float32)}
    if with_box:
      aux0["box_loss"] = jnp.zeros((), jnp.float32)
    (loss, aux, grads), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), aux0, zeros),
        (jnp.arange(accum_steps), split(images), jax.tree.map(split, targets)))
    loss, aux, (grads, loss_grads) = jax.tree.map(lambda g: g / accum_steps, (loss, aux, grads))

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss_params, loss_opt_state = state.loss_params, state.loss_opt_state
  if loss_params is not None:
    loss_updates, loss_opt_state = loss_tx.update(loss_grads, loss_opt_state, loss_params)
    loss_params = optax.apply_updates(loss_params, loss_updates)
  ema_params = state.ema_params
  if ema_params is not None:
    d = ema_decay_at(ema_decay, state.step, ema_warmup)
    ema_params = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)

  finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(loss_grads)
  skipped = state.skipped_steps
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    loss_params, loss_opt_state = keep((loss_params, loss_opt_state), (state.loss_params, state.loss_opt_state))
    if ema_params is not None:
      ema_params = keep(ema_params, state.ema_params)
    skipped = skipped + (~finite).astype(jnp.int32)
  stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
           "nonfinite": (~finite).astype(jnp.float32), "skipped_steps": skipped}
  if with_box or loss_params is not None:
    stats.update(aux)
  stats.update(losses.loss_param_stats(loss_params))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                       skipped_steps=skipped, loss_params=loss_params, loss_opt_state=loss_opt_state), stats
