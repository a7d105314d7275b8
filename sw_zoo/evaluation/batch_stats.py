"""What one evaluation batch adds to the streamed state (device side, jax): per-tag counts at a
threshold, MCut counts and per-tag score histograms, as int32 arrays summed over batches and hosts
by the sharded reduction. `metrics` turns the sums into scores on the host.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sw_zoo.evaluation import metrics


def _decision_counts(pred: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
  valid = mask[:, None].astype(jnp.float32)
  pred = pred.astype(jnp.float32) * valid
  true = (labels > 0.5).astype(jnp.float32) * valid
  return {
      "tp": jnp.sum(pred * true, axis=0),
      "fp": jnp.sum(pred * (1.0 - true), axis=0),
      "fn": jnp.sum((1.0 - pred) * true, axis=0),
      "support": jnp.sum(true, axis=0),
  }


def batch_counts(probs: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray, threshold: float) -> dict[str, jnp.ndarray]:
  """Per-tag true/false positive and false negative counts of one batch, padding rows excluded.

  probs, labels: [B, T]; mask: [B] bool, False for rows that only pad the last batch.
  """
  return _decision_counts(probs >= threshold, labels, mask)


# ---- Device side: what one batch adds to the streamed state --------------------------------


def score_bins(probs: jnp.ndarray, num_bins: int) -> jnp.ndarray:
  """Bin index of each score: floor(p * bins), with p = 1.0 in the last bin."""
  return jnp.clip(jnp.floor(probs.astype(jnp.float32) * num_bins), 0, num_bins - 1).astype(jnp.int32)


def batch_histograms(probs: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray,
                     num_bins: int) -> dict[str, jnp.ndarray]:
  """Per-tag histograms of the scores of positives and of negatives: int32 [T, num_bins] each.

  One scatter-add of B x T ones into a [2, T, bins] table (a one-hot would materialise
  B x T x bins). Padding rows add zero.
  """
  num_tags = probs.shape[-1]
  if 2 * num_tags * num_bins >= 2**31:
    raise ValueError(f"{num_tags} tags x {num_bins} bins x 2 overflows the int32 table index; use fewer bins")
  negative = (labels <= 0.5).astype(jnp.int32)
  tag = jnp.arange(num_tags, dtype=jnp.int32)[None, :]
  index = (negative * num_tags + tag) * num_bins + score_bins(probs, num_bins)
  weight = jnp.broadcast_to(mask[:, None], probs.shape).astype(jnp.int32)
  table = jnp.zeros((2 * num_tags * num_bins,), jnp.int32).at[index.ravel()].add(weight.ravel())
  table = table.reshape(2, num_tags, num_bins)
  return {"pos_hist": table[0], "neg_hist": table[1]}


def mcut_decisions(probs: jnp.ndarray) -> jnp.ndarray:
  """Per image, the tags above its MCut threshold (`metrics.mcut_threshold`). [B, T] bool."""
  return probs > metrics.mcut_threshold(probs, xp=jnp)


STAT_KEYS = ("pos_hist", "neg_hist", "tp", "fp", "fn", "support", "mcut_tp", "mcut_fp", "mcut_fn", "num_images")


def batch_stats(probs: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray, *, threshold: float,
                num_bins: int) -> dict[str, jnp.ndarray]:
  """Everything an evaluation streams for one batch, as int32 (float32 sums stop being exact at
  2^24 per tag; int32 holds 2^31 images): histograms, counts at `threshold`, MCut counts and
  the number of real images. Sum these over batches (and hosts) and pass to the host functions."""
  at_threshold = batch_counts(probs, labels, mask, threshold)
  mcut = _decision_counts(mcut_decisions(probs), labels, mask)
  stats = {k: v.astype(jnp.int32) for k, v in at_threshold.items()}
  stats.update({f"mcut_{k}": mcut[k].astype(jnp.int32) for k in ("tp", "fp", "fn")})
  stats.update(batch_histograms(probs, labels, mask, num_bins))
  stats["num_images"] = jnp.sum(mask.astype(jnp.int32))
  return stats


def zero_stats(num_tags: int, num_bins: int) -> dict[str, np.ndarray]:
  shapes = {"pos_hist": (num_tags, num_bins), "neg_hist": (num_tags, num_bins), "num_images": ()}
  return {k: np.zeros(shapes.get(k, (num_tags,)), np.int32) for k in STAT_KEYS}


def host_stats(stats: dict[str, jax.Array]) -> dict[str, np.ndarray]:
  """Summed device stats -> int64 host arrays (sums of several runs can then not overflow); float
  sums (the box IoU) -> float64."""
  return {k: np.asarray(v, np.float64 if np.issubdtype(np.asarray(v).dtype, np.floating) else np.int64)
          for k, v in jax.device_get(stats).items()}
