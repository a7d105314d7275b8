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

from sw_zoo.train import robust_loss

LOSS_NAMES = ("bce", "asl", "focal")
ROBUST_MODES = ("none", "general", "adaptive")

LossFn = Callable[..., jax.Array]


def _reduce(per_tag: jax.Array, tag_weights: jax.Array | None) -> jax.Array:
  if tag_weights is not None:
    per_tag = per_tag * tag_weights
  return per_tag.sum(axis=-1)


def _bce_per_tag(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels)


def _asl_per_tag(logits: jax.Array, labels: jax.Array, *, gamma_neg: float, gamma_pos: float,
                 clip: float) -> jax.Array:
  logits = logits.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  log_p = jax.nn.log_sigmoid(logits)
  # Shifted negative probability: p_m = max(p - clip, 0); log(1 - p_m) computed from it directly.
  p_m = jnp.maximum(p - clip, 0.0) if clip > 0 else p
  log_not_p_m = jnp.log1p(-jnp.minimum(p_m, 1.0 - 1e-7)) if clip > 0 else jax.nn.log_sigmoid(-logits)
  w_pos = (1.0 - p) ** gamma_pos if gamma_pos else 1.0
  w_neg = p_m ** gamma_neg if gamma_neg else 1.0
  return -(labels * w_pos * log_p + (1.0 - labels) * w_neg * log_not_p_m)


def _focal_per_tag(logits: jax.Array, labels: jax.Array, *, gamma: float, alpha: float | None) -> jax.Array:
  return optax.sigmoid_focal_loss(logits.astype(jnp.float32), labels, alpha=alpha, gamma=gamma)


def sigmoid_bce(logits: jax.Array, labels: jax.Array, tag_weights: jax.Array | None = None) -> jax.Array:
  """Binary cross-entropy per tag, summed over tags: shape [B]."""
  return _reduce(_bce_per_tag(logits, labels), tag_weights)


def asymmetric(logits: jax.Array, labels: jax.Array, tag_weights: jax.Array | None = None, *,
               gamma_neg: float, gamma_pos: float, clip: float) -> jax.Array:
  """Asymmetric loss (Ridnik et al., 2021): focusing with separate exponents for positives and
  negatives, and a probability margin `clip` that discards easy negatives entirely. Booru labels
  miss many true tags, so a confident "negative" is often a missing positive; ASL's margin stops
  the model being pushed hard against those."""
  return _reduce(_asl_per_tag(logits, labels, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip), tag_weights)


def focal(logits: jax.Array, labels: jax.Array, tag_weights: jax.Array | None = None, *,
          gamma: float, alpha: float | None) -> jax.Array:
  """Sigmoid focal loss (Lin et al., 2017), summed over tags. alpha None: no class balancing."""
  return _reduce(_focal_per_tag(logits, labels, gamma=gamma, alpha=alpha), tag_weights)


def smooth_labels(labels: jax.Array, amount: float) -> jax.Array:
  """Multi-label smoothing: every target moves `amount / 2` towards 0.5 (each tag is its own
  two-class problem)."""
  return labels * (1.0 - amount) + 0.5 * amount


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float) -> jax.Array:
  """Smooth-L1 (Huber with transition `beta`) summed over the last axis: [B, 4] boxes -> [B].
  Quadratic within beta of the target (stable near convergence), linear beyond (a badly placed
  box early on does not swamp the tag loss's gradients)."""
  diff = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  per = jnp.where(diff < beta, 0.5 * jnp.square(diff) / beta, diff - 0.5 * beta) if beta > 0 else diff
  return per.sum(axis=-1)


def _per_tag_fn(loss_config: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
  name = loss_config.name
  if name == "bce":
    return _bce_per_tag
  if name == "asl":
    return lambda logits, labels: _asl_per_tag(logits, labels, gamma_neg=loss_config.asl_gamma_neg,
                                               gamma_pos=loss_config.asl_gamma_pos, clip=loss_config.asl_clip)
  if name == "focal":
    alpha = loss_config.focal_alpha if loss_config.focal_alpha >= 0 else None
    return lambda logits, labels: _focal_per_tag(logits, labels, gamma=loss_config.focal_gamma, alpha=alpha)
  raise ValueError(f"config.loss.name: {name!r} is not one of {LOSS_NAMES}")


def init_loss_params(loss_config: Any, num_tags: int) -> dict[str, jax.Array] | None:
  """The loss's own trainable params: with loss.robust='adaptive', one (alpha, scale) latent pair
  per tag, starting at loss.robust_alpha / loss.robust_scale; None otherwise."""
  if loss_config.get("robust", "none") != "adaptive":
    return None
  alpha_latent, scale_latent = robust_loss.latents_for(float(loss_config.robust_alpha),
                                                       float(loss_config.robust_scale))
  return {"alpha_latent": jnp.full((num_tags,), alpha_latent, jnp.float32),
          "scale_latent": jnp.full((num_tags,), scale_latent, jnp.float32)}


def loss_param_stats(loss_params: dict[str, jax.Array] | None) -> dict[str, jax.Array]:
  """Mean learned shape and scale, for the training log."""
  if not loss_params:
    return {}
  alpha, scale = robust_loss.adaptive_params(loss_params["alpha_latent"], loss_params["scale_latent"])
  return {"robust_alpha": alpha.mean(), "robust_scale": scale.mean()}


def make_loss(loss_config: Any) -> LossFn:
  """`config.loss` -> loss(logits, labels, tag_weights=None, loss_params=None) -> [B].

  Label smoothing is applied to the targets first. With loss.robust 'general' each tag's loss x
  (>= 0) becomes Barron's rho(x, robust_alpha, robust_scale); with 'adaptive' it becomes the
  adaptive loss's negative log-likelihood with alpha and scale learned per tag (`loss_params`,
  see `init_loss_params`), as e6tag wrapped its focal loss. Both leave small losses ~quadratic and
  flatten large ones (alpha < 2), so tags the model confidently contradicts (often label noise:
  a missing tag, a wrong one) stop dominating the gradient.
  """
  per_tag = _per_tag_fn(loss_config)
  smoothing = float(loss_config.label_smoothing)
  robust = loss_config.get("robust", "none")
  if robust not in ROBUST_MODES:
    raise ValueError(f"config.loss.robust: {robust!r} is not one of {ROBUST_MODES}")

  def loss(logits, labels, tag_weights=None, loss_params=None):
    if smoothing:
      labels = smooth_labels(labels, smoothing)
    x = per_tag(logits, labels)
    if robust == "general":
      x = robust_loss.rho(x, float(loss_config.robust_alpha), float(loss_config.robust_scale))
    elif robust == "adaptive":
      x = robust_loss.adaptive_nll(x, loss_params["alpha_latent"], loss_params["scale_latent"])
    return _reduce(x, tag_weights)
  return loss


def loss_optimizer(loss_config: Any) -> optax.GradientTransformation | None:
  """Adam for the adaptive robust loss's latents (None without them): their own small learning
  rate, apart from the model's optimizer, its schedule, weight decay, AGC and freezing."""
  if loss_config.get("robust", "none") != "adaptive":
    return None
  return optax.adam(float(loss_config.robust_lr))
