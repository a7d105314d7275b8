"""Pure train / eval step functions. The loop jits them with shardings; nothing here knows
about devices, hosts or files."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sw_zoo import metrics
from sw_zoo.train.state import TrainState

# Stochastic layers in sw_zoo.models draw from these streams.
RNG_STREAMS = ("dropout", "drop_path")


def init_state(model: Any, tx: optax.GradientTransformation, *, image_size: int, seed: int) -> TrainState:
  key = jax.random.key(seed)
  init_key, state_key = jax.random.split(key)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init({"params": init_key}, dummy, train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(state_key))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Any, tx: optax.GradientTransformation,
               loss_fn: Callable, schedule: optax.Schedule, mix_fn: Callable | None = None,
               tag_weights: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update. `mix_fn(images, labels, key)` (MixUp/CutMix) runs on device, on the
  global batch; `tag_weights` [T] rescales each tag's loss."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  mix_key, *stream_keys = jax.random.split(step_key, len(RNG_STREAMS) + 1)
  rngs = dict(zip(RNG_STREAMS, stream_keys))
  images, labels = batch["image"].astype(jnp.float32), batch["labels"]
  if mix_fn is not None:
    images, labels = mix_fn(images, labels, mix_key)

  def loss_of(params):
    logits = model.apply({"params": params}, images, train=True, rngs=rngs)
    return loss_fn(logits, labels, tag_weights).mean()

  loss, grads = jax.value_and_grad(loss_of)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), stats


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: Any, threshold: float) -> dict[str, jax.Array]:
  """Per-tag counts for one padded batch; summed over the global batch by the sharded reduction."""
  logits = model.apply({"params": params}, batch["image"].astype(jnp.float32), train=False)
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  return metrics.batch_counts(probs, batch["labels"], batch["mask"], threshold)
