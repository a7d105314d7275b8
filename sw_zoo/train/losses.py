"""Multi-label losses, built from `config.loss`. Every hyperparameter comes from the config;
nothing is a default hidden here.

Each loss maps (logits [B, T], labels [B, T] in [0, 1], tag_weights [T] or None) to a per-image
loss [B], summed over tags: summing (not averaging) keeps the gradient per positive tag
independent of the vocabulary size, so a learning rate tuned on 100 tags stays sensible on 10k.
Labels may be soft (MixUp, label smoothing); every loss below treats y and 1 - y as weights.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

LOSS_NAMES = ("bce", "asl", "focal")

LossFn = Callable[[jax.Array, jax.Array, "jax.Array | None"], jax.Array]


def _reduce(per_tag: jax.Array, tag_weights: jax.Array | None) -> jax.Array:
  if tag_weights is not None:
    per_tag = per_tag * tag_weights
  return per_tag.sum(axis=-1)


def sigmoid_bce(logits: jax.Array, labels: jax.Array, tag_weights: jax.Array | None = None) -> jax.Array:
  """Binary cross-entropy per tag, summed over tags: shape [B]."""
  return _reduce(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels), tag_weights)


def asymmetric(logits: jax.Array, labels: jax.Array, tag_weights: jax.Array | None = None, *,
               gamma_neg: float, gamma_pos: float, clip: float) -> jax.Array:
  """Asymmetric loss (Ridnik et al., 2021): focusing with separate exponents for positives and
  negatives, and a probability margin `clip` that discards easy negatives entirely. Booru labels
  miss many true tags, so a confident "negative" is often a missing positive; ASL's margin stops
  the model being pushed hard against those."""
  logits = logits.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  log_p = jax.nn.log_sigmoid(logits)
  # Shifted negative probability: p_m = max(p - clip, 0); log(1 - p_m) computed from it directly.
  p_m = jnp.maximum(p - clip, 0.0) if clip > 0 else p
  log_not_p_m = jnp.log1p(-jnp.minimum(p_m, 1.0 - 1e-7)) if clip > 0 else jax.nn.log_sigmoid(-logits)
  w_pos = (1.0 - p) ** gamma_pos if gamma_pos else 1.0
  w_neg = p_m ** gamma_neg if gamma_neg else 1.0
  per_tag = -(labels * w_pos * log_p + (1.0 - labels) * w_neg * log_not_p_m)
  return _reduce(per_tag, tag_weights)


def focal(logits: jax.Array, labels: jax.Array, tag_weights: jax.Array | None = None, *,
          gamma: float, alpha: float | None) -> jax.Array:
  """Sigmoid focal loss (Lin et al., 2017), summed over tags. alpha None: no class balancing."""
  per_tag = optax.sigmoid_focal_loss(logits.astype(jnp.float32), labels, alpha=alpha, gamma=gamma)
  return _reduce(per_tag, tag_weights)


def smooth_labels(labels: jax.Array, amount: float) -> jax.Array:
  """Multi-label smoothing: every target moves `amount / 2` towards 0.5 (each tag is its own
  two-class problem)."""
  return labels * (1.0 - amount) + 0.5 * amount


def make_loss(loss_config: Any) -> LossFn:
  """`config.loss` -> loss function (label smoothing folded in)."""
  name = loss_config.name
  if name == "bce":
    base = sigmoid_bce
  elif name == "asl":
    def base(logits, labels, tag_weights=None):
      return asymmetric(logits, labels, tag_weights, gamma_neg=loss_config.asl_gamma_neg,
                        gamma_pos=loss_config.asl_gamma_pos, clip=loss_config.asl_clip)
  elif name == "focal":
    alpha = loss_config.focal_alpha if loss_config.focal_alpha >= 0 else None

    def base(logits, labels, tag_weights=None):
      return focal(logits, labels, tag_weights, gamma=loss_config.focal_gamma, alpha=alpha)
  else:
    raise ValueError(f"config.loss.name: {name!r} is not one of {LOSS_NAMES}")
  smoothing = float(loss_config.label_smoothing)
  if not smoothing:
    return base

  def smoothed(logits, labels, tag_weights=None):
    return base(logits, smooth_labels(labels, smoothing), tag_weights)
  return smoothed
