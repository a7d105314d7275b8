"""Multi-label metrics from streamed state (host side, numpy): what `batch_stats` summed over a
split, on device and across hosts, turned into scores once at the end, so evaluating a large split
never holds all predictions in memory.

Two kinds of streamed state:
  * counts at one threshold (`batch_counts`, what the training loop logs), exact;
  * per-tag score histograms of positives and negatives over `num_bins` equal bins of [0, 1]
    (`batch_histograms`). Every threshold-dependent metric (precision/recall/F1 curves, the
    P=R and best-F1 thresholds, average precision, AUC-ROC) is read off their cumulative sums.
    Memory is O(tags x bins) whatever the dataset size (9083 tags x 1024 bins x 2 x int32 =
    74 MB). Thresholds are the bin edges k / num_bins; at an edge the decision `score >= edge`
    is exact. Ranking metrics treat scores that share a bin as tied: AUC is then off by at most
    half the fraction of (positive, negative) pairs that share a bin, AP by a comparable amount
    (measured in BUILD_NOTES); with scores already on the bin grid both equal scikit-learn's.
MCut (`mcut_threshold`) picks a threshold per image, so its counts are streamed directly; the
same function decides `Tagger`'s per-image MCut.
"""
from __future__ import annotations

import dataclasses

import numpy as np

COUNT_KEYS = ("tp", "fp", "fn", "support")
DEFAULT_BINS = 1024  # a power of two: score * bins is exact in float32, so bin edges are exact


def mcut_threshold(scores, xp=np):
  """MCut (Largeron et al., 2012): per row (the last axis), the midpoint of the largest gap
  between consecutive sorted scores; tags scoring above it are predicted. [..., T] -> [..., 1].

  `xp` is the array namespace (numpy for `Tagger`, jax.numpy inside jitted evaluation), so both
  cut the same way. With fewer than two scores there is no gap: the cut is 0.5."""
  if scores.shape[-1] < 2:
    return xp.full(scores.shape[:-1] + (1,), 0.5, dtype=scores.dtype)
  ordered = -xp.sort(-scores, axis=-1)
  gap_at = xp.argmax(ordered[..., :-1] - ordered[..., 1:], axis=-1)[..., None]
  return 0.5 * (xp.take_along_axis(ordered, gap_at, axis=-1) + xp.take_along_axis(ordered, gap_at + 1, axis=-1))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape, np.float64), where=den > 0)


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



# ---- Host side: scores from summed counts ----------------------------------------------------


def matthews_corrcoef(tp: float, fp: float, fn: float, tn: float) -> float:
  """MCC of pooled binary decisions; 0 when any marginal is empty (scikit-learn's convention)."""
  tp, fp, fn, tn = (float(x) for x in (tp, fp, fn, tn))
  den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
  return (tp * tn - fp * fn) / np.sqrt(den) if den > 0 else 0.0


def threshold_scores(counts: dict[str, np.ndarray], num_images: int) -> dict[str, float]:
  """Micro and macro precision / recall / F1 and micro MCC at the threshold the counts were
  taken at. Macro averages over tags present in the labels (as `f1_scores`); a tag with no
  predicted positives has precision 0 there."""
  tp, fp, fn, support = (np.asarray(counts[k], np.float64) for k in COUNT_KEYS)
  present = support > 0
  per_p, per_r, per_f1 = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn), _safe_div(2 * tp, 2 * tp + fp + fn)
  mean = lambda x: float(x[present].mean()) if present.any() else 0.0
  tn = num_images * len(tp) - tp.sum() - fp.sum() - fn.sum()
  return {
      "micro_precision": float(_safe_div(tp.sum(), tp.sum() + fp.sum())),
      "micro_recall": float(_safe_div(tp.sum(), tp.sum() + fn.sum())),
      "micro_f1": float(_safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
      "macro_precision": mean(per_p),
      "macro_recall": mean(per_r),
      "macro_f1": mean(per_f1),
      "mcc": matthews_corrcoef(tp.sum(), fp.sum(), fn.sum(), tn),
      # Share of all (image, tag) decisions that are right (e6tag's "element-wise accuracy"; with
      # few positives per image it sits near 1 whatever the model, so read it beside F1 / AUC).
      "elementwise_accuracy": float(_safe_div(tp.sum() + tn, num_images * len(tp))),
      "tags_evaluated": int(present.sum()),
  }


ECE_GROUPS = 15  # the usual equal-width confidence bins of expected calibration error


def expected_calibration_error(pos_hist: np.ndarray, neg_hist: np.ndarray, groups: int = ECE_GROUPS) -> float:
  """ECE of the pooled (image, tag) scores: over `groups` equal-width score bins, the
  decision-weighted mean of |share of positives - mean score|. From the evaluation's per-tag score
  histograms (each fine bin's scores taken at its centre, off by at most half a fine bin), so it
  costs no extra pass. NaN without decisions."""
  pos = np.asarray(pos_hist, np.float64).reshape(-1, np.shape(pos_hist)[-1]).sum(0)
  neg = np.asarray(neg_hist, np.float64).reshape(-1, np.shape(neg_hist)[-1]).sum(0)
  bins = len(pos)
  total = pos + neg
  if total.sum() == 0:
    return float("nan")
  centre = (np.arange(bins) + 0.5) / bins
  group = np.minimum((np.arange(bins) * groups) // bins, groups - 1)
  n = np.bincount(group, total, groups)
  conf = np.bincount(group, centre * total, groups)
  hits = np.bincount(group, pos, groups)
  used = n > 0
  return float(np.sum(np.abs(hits[used] - conf[used])) / total.sum())


def bin_edges(num_bins: int) -> np.ndarray:
  """The candidate thresholds: edge k = k / bins, k = 0 .. bins - 1."""
  return np.arange(num_bins, dtype=np.float64) / num_bins


def _at_or_above(hist: np.ndarray) -> np.ndarray:
  """out[..., k] = number of scores in bins >= k, i.e. with score >= edge k."""
  return np.cumsum(np.asarray(hist, np.int64)[..., ::-1], axis=-1)[..., ::-1]


@dataclasses.dataclass(frozen=True)
class Curve:
  """Pooled counts at every bin edge (arrays [bins]), from one pair of histograms."""
  thresholds: np.ndarray
  tp: np.ndarray
  fp: np.ndarray
  fn: np.ndarray

  @property
  def precision(self) -> np.ndarray:
    return _safe_div(self.tp, self.tp + self.fp)

  @property
  def recall(self) -> np.ndarray:
    return _safe_div(self.tp, self.tp + self.fn)

  @property
  def f1(self) -> np.ndarray:
    return _safe_div(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def threshold_curve(pos_hist: np.ndarray, neg_hist: np.ndarray) -> Curve:
  """Micro (pooled) counts at each edge; histograms [bins] or [T, bins] (summed over tags)."""
  pos = np.asarray(pos_hist, np.int64).reshape(-1, np.shape(pos_hist)[-1]).sum(0)
  neg = np.asarray(neg_hist, np.int64).reshape(-1, np.shape(neg_hist)[-1]).sum(0)
  tp, fp = _at_or_above(pos), _at_or_above(neg)
  return Curve(bin_edges(len(pos)), tp, fp, pos.sum() - tp)


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
  threshold: float
  precision: float
  recall: float
  f1: float

  def as_dict(self, prefix: str) -> dict[str, float]:
    return {f"{prefix}_threshold": self.threshold, f"{prefix}_precision": self.precision,
            f"{prefix}_recall": self.recall, f"{prefix}_f1": self.f1}


def _point(curve: Curve, k: int) -> OperatingPoint:
  return OperatingPoint(float(curve.thresholds[k]), float(curve.precision[k]), float(curve.recall[k]),
                        float(curve.f1[k]))


def _undefined_point() -> OperatingPoint:
  return OperatingPoint(float("nan"), 0.0, 0.0, 0.0)


def precision_equals_recall(curve: Curve) -> OperatingPoint:
  """The edge where |precision - recall| is smallest (how WD taggers report: "P=R: threshold
  t, F1 f"), among edges that predict something; the lowest such edge on ties."""
  defined = (curve.tp + curve.fp > 0) & (curve.tp + curve.fn > 0)
  if not defined.any():
    return _undefined_point()
  gap = np.where(defined, np.abs(curve.precision - curve.recall), np.inf)
  return _point(curve, int(np.argmin(gap)))


def best_f1(curve: Curve) -> OperatingPoint:
  """The edge with the highest F1 (the lowest such edge on ties)."""
  if curve.tp[0] + curve.fn[0] == 0:
    return _undefined_point()
  return _point(curve, int(np.argmax(curve.f1)))


def average_precision(pos_hist: np.ndarray, neg_hist: np.ndarray) -> np.ndarray:
  """AP per row of [..., bins] histograms: sum over bins of (recall gained) x (precision at that
  bin's edge), i.e. scikit-learn's `average_precision_score` with a bin's scores tied. NaN for
  a row without positives."""
  pos = np.asarray(pos_hist, np.int64)
  tp, fp = _at_or_above(pos), _at_or_above(neg_hist)
  num_pos = tp[..., 0]
  gained = (pos * _safe_div(tp, tp + fp)).sum(-1)
  return np.where(num_pos > 0, _safe_div(gained, num_pos), np.nan)


def roc_auc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> np.ndarray:
  """AUC-ROC per row (trapezoid over the bin edges = P(pos > neg) + P(same bin) / 2). NaN for
  a row lacking positives or negatives."""
  neg = np.asarray(neg_hist, np.int64)
  tp = _at_or_above(pos_hist)
  above = np.concatenate([tp[..., 1:], np.zeros_like(tp[..., :1])], axis=-1)
  num_pos, num_neg = tp[..., 0], neg.sum(-1)
  area = (neg * (tp + above)).sum(-1) / 2.0
  return np.where((num_pos > 0) & (num_neg > 0), _safe_div(area, num_pos * num_neg), np.nan)


def per_tag_curves(pos_hist: np.ndarray, neg_hist: np.ndarray, *, chunk_size: int = 512) -> dict[str, np.ndarray]:
  """Per-tag AP, AUC, best-F1 edge and F1 there ([T] each, NaN / 0 for tags without
  positives), and the macro-F1 curve over edges ([bins], mean over tags with positives).
  Works through the tags in chunks, so peak memory stays a few chunk x bins arrays."""
  pos_hist, neg_hist = np.asarray(pos_hist), np.asarray(neg_hist)
  num_tags, num_bins = pos_hist.shape
  out = {k: np.empty((num_tags,), np.float64) for k in ("ap", "auc", "best_threshold", "best_f1")}
  macro_sum, present_total = np.zeros((num_bins,), np.float64), 0
  edges = bin_edges(num_bins)
  for start in range(0, num_tags, chunk_size):
    part = slice(start, start + chunk_size)
    pos, neg = pos_hist[part].astype(np.int64), neg_hist[part].astype(np.int64)
    tp, fp = _at_or_above(pos), _at_or_above(neg)
    num_pos = tp[:, :1]
    f1 = _safe_div(2 * tp, tp + fp + num_pos)  # 2tp / (2tp + fp + fn), fn = num_pos - tp
    present = num_pos[:, 0] > 0
    best = np.argmax(f1, axis=1)
    out["best_threshold"][part] = np.where(present, edges[best], np.nan)
    out["best_f1"][part] = np.where(present, f1[np.arange(len(best)), best], 0.0)
    out["ap"][part] = average_precision(pos, neg)
    out["auc"][part] = roc_auc(pos, neg)
    macro_sum += f1[present].sum(0)
    present_total += int(present.sum())
  out["macro_f1_curve"] = macro_sum / max(present_total, 1)
  return out


def mcut_scores(stats: dict[str, np.ndarray]) -> dict[str, float]:
  """Micro and macro F1 of the MCut decisions (macro over tags with positives)."""
  counts = {"tp": stats["mcut_tp"], "fp": stats["mcut_fp"], "fn": stats["mcut_fn"], "support": stats["support"]}
  scores = f1_scores(counts)
  return {"mcut_micro_f1": scores["micro_f1"], "mcut_macro_f1": scores["macro_f1"]}

