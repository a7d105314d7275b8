"""Multi-label metrics that stream: per-tag counts are summed batch by batch (on device, across
hosts by the sharded reduction) and turned into scores once at the end, so evaluating a large
split never holds all predictions in memory.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

COUNT_KEYS = ("tp", "fp", "fn", "support")


def batch_counts(probs: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray, threshold: float) -> dict[str, jnp.ndarray]:
  """Per-tag true/false positive and false negative counts of one batch, padding rows excluded.

  probs, labels: [B, T]; mask: [B] bool, False for rows that only pad the last batch.
  """
  valid = mask[:, None].astype(jnp.float32)
  pred = (probs >= threshold).astype(jnp.float32) * valid
  true = (labels > 0.5).astype(jnp.float32) * valid
  return {
      "tp": jnp.sum(pred * true, axis=0),
      "fp": jnp.sum(pred * (1.0 - true), axis=0),
      "fn": jnp.sum((1.0 - pred) * true, axis=0),
      "support": jnp.sum(true, axis=0),
  }


def zero_counts(num_tags: int) -> dict[str, np.ndarray]:
  return {k: np.zeros((num_tags,), np.float64) for k in COUNT_KEYS}


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def f1_scores(counts: dict[str, np.ndarray]) -> dict[str, float]:
  """Micro and macro precision / recall / F1 from summed counts.

  Micro pools every (image, tag) decision, so frequent tags dominate it; macro averages per-tag
  F1 over the tags that occur in the evaluated labels (a tag never seen there has no defined
  recall, and counting it as 0 or 1 would only measure the split, not the model).
  """
  tp, fp, fn = (np.asarray(counts[k], np.float64) for k in ("tp", "fp", "fn"))
  support = np.asarray(counts["support"], np.float64)
  micro_p = _safe_div(tp.sum(), tp.sum() + fp.sum())
  micro_r = _safe_div(tp.sum(), tp.sum() + fn.sum())
  micro_f1 = _safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())
  per_tag_f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
  present = support > 0
  macro_f1 = float(per_tag_f1[present].mean()) if present.any() else 0.0
  return {
      "micro_precision": float(micro_p),
      "micro_recall": float(micro_r),
      "micro_f1": float(micro_f1),
      "macro_f1": macro_f1,
      "tags_evaluated": int(present.sum()),
  }
