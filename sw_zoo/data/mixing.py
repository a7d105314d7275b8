"""Device-side MixUp and CutMix for multi-label batches, in jax (jit-able, sharding-agnostic).

Each example is mixed with a partner from the same batch: its neighbour one place down the batch
axis (`jnp.roll`), which is as random as any permutation because batches are already shuffled,
and on a batch sharded over devices costs one neighbour exchange (collective-permute) instead of
the all-to-all a random gather needs. Labels are mixed with the same weight as the pixels: the
MixUp lambda, or for CutMix the fraction of the image left unpasted (after clipping the box).

    images, labels = mix_batch(images_f32, labels, key, mixup_alpha=0.2, cutmix_alpha=0.0,
                               switch_prob=0.5)

SW-CV-ModelZoo trained its NFNets with MixUp alpha 0.2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check(mixup_alpha: float, cutmix_alpha: float, switch_prob: float, prob: float) -> None:
  for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
    if not value >= 0.0:
      raise ValueError(f"{name} must be >= 0 (0 disables it), got {value!r}")
  for name, value in (("switch_prob", switch_prob), ("prob", prob)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def mix_batch(images: jax.Array, labels: jax.Array, rng: jax.Array, *, mixup_alpha: float,
              cutmix_alpha: float, switch_prob: float = 0.5, prob: float = 1.0,
              per_example: bool = True) -> tuple[jax.Array, jax.Array]:
  """MixUp and/or CutMix a batch. Returns (images, labels) with the inputs' shapes and dtypes.

  Args:
    images: float [B, H, W, C] (integer images are converted to float32).
    labels: float [B, T] multi-hot (or already soft) targets.
    rng: a jax PRNG key.
    mixup_alpha: Beta(alpha, alpha) concentration for MixUp's lambda; 0 disables MixUp.
    cutmix_alpha: Beta(alpha, alpha) concentration for CutMix's lambda; 0 disables CutMix.
    switch_prob: with both enabled, the probability that an example uses CutMix, else MixUp.
    prob: probability that an example is mixed at all (unmixed examples pass through).
    per_example: draw lambda / the box / the MixUp-or-CutMix choice per example (True) or once
      for the whole batch (timm's 'batch' mode).

  With both alphas 0 this is the identity and draws nothing. The hyperparameters are static
  (Python floats): pass them with functools.partial, not as traced arguments.
  """
  _check(mixup_alpha, cutmix_alpha, switch_prob, prob)
  if images.ndim != 4 or labels.ndim != 2 or images.shape[0] != labels.shape[0]:
    raise ValueError(f"expected images [B, H, W, C] and labels [B, T] with the same B, got "
                     f"{images.shape} and {labels.shape}")
  if mixup_alpha == 0.0 and cutmix_alpha == 0.0:
    return images, labels
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  batch, height, width = images.shape[:3]
  draw_shape = (batch,) if per_example else (1,)
  k_mix, k_cut, k_switch, k_apply, k_y, k_x = jax.random.split(rng, 6)

  def beta(key, alpha):
    return jax.random.beta(key, alpha, alpha, draw_shape, dtype=jnp.float32)

  one = jnp.ones(draw_shape, jnp.float32)
  lam_mix = beta(k_mix, mixup_alpha) if mixup_alpha > 0 else one
  if cutmix_alpha > 0:
    # timm's rand_bbox: a box of relative side sqrt(1 - lam), centred uniformly, then clipped;
    # lam is recomputed from the clipped area.
    cut = jnp.sqrt(1.0 - beta(k_cut, cutmix_alpha))
    cut_h, cut_w = (cut * height).astype(jnp.int32), (cut * width).astype(jnp.int32)
    cy = jax.random.randint(k_y, draw_shape, 0, height)
    cx = jax.random.randint(k_x, draw_shape, 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    if mixup_alpha > 0:
      use_cut = jax.random.bernoulli(k_switch, switch_prob, draw_shape)
    else:
      use_cut = jnp.ones(draw_shape, bool)
  else:
    lam_cut, use_cut = one, jnp.zeros(draw_shape, bool)
    y0 = y1 = x0 = x1 = jnp.zeros(draw_shape, jnp.int32)
  apply = jax.random.bernoulli(k_apply, prob, draw_shape) if prob < 1.0 \
      else jnp.ones(draw_shape, bool)
  use_cut = use_cut & apply
  lam = jnp.where(apply, jnp.where(use_cut, lam_cut, lam_mix), 1.0)  # weight of the example itself
  lam, use_cut = jnp.broadcast_to(lam, (batch,)), jnp.broadcast_to(use_cut, (batch,))
  y0, y1, x0, x1 = (jnp.broadcast_to(v, (batch,)) for v in (y0, y1, x0, x1))

  # One per-pixel weight for the example itself: the box is 0 (partner's pixels), MixUp is lam.
  iy = jnp.arange(height, dtype=jnp.int32)[None, :, None]
  ix = jnp.arange(width, dtype=jnp.int32)[None, None, :]
  in_box = ((iy >= y0[:, None, None]) & (iy < y1[:, None, None])
            & (ix >= x0[:, None, None]) & (ix < x1[:, None, None]))
  weight = jnp.where(use_cut[:, None, None], jnp.where(in_box, 0.0, 1.0), lam[:, None, None])
  weight = weight[..., None].astype(images.dtype)
  partner_images = jnp.roll(images, 1, axis=0)
  mixed_images = weight * images + (1 - weight) * partner_images  # exact where weight is 0 / 1
  lam_labels = lam[:, None].astype(labels.dtype)
  partner_labels = jnp.roll(labels, 1, axis=0)
  mixed_labels = lam_labels * labels + (1 - lam_labels) * partner_labels
  return mixed_images, mixed_labels
