"""Summed eval stats + the tag vocabulary -> per-category metrics, per-tag rows and the curves
the plots draw. Pure host-side numpy; nothing here touches devices or files."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from sw_zoo.evaluation import metrics
from sw_zoo.data import vocab as vocab_lib

ALL = "all"
# Report order: WD-tagger habit (rating, general, character), then the rest.
CATEGORY_ORDER = (vocab_lib.CATEGORY_RATING, vocab_lib.CATEGORY_GENERAL, vocab_lib.CATEGORY_CHARACTER,
                  vocab_lib.CATEGORY_COPYRIGHT, vocab_lib.CATEGORY_ARTIST, vocab_lib.CATEGORY_META)




def category_groups(tags: vocab_lib.TagVocab) -> list[tuple[str, np.ndarray]]:
  """[('all', every index), (category name, its indices), ...] for the categories present."""
  present = [int(c) for c in np.unique(tags.categories)]
  ordered = [c for c in CATEGORY_ORDER if c in present] + sorted(c for c in present if c not in CATEGORY_ORDER)
  return [(ALL, np.arange(len(tags)))] + [(vocab_lib.category_name(c), tags.category_indices(c)) for c in ordered]


@dataclasses.dataclass
class Report:
  categories: dict[str, dict[str, Any]]  # name -> metrics (see `summarise`)
  per_tag: dict[str, np.ndarray]  # [T] arrays: support, precision, recall, f1, ap, auc, best_threshold, best_f1
  curves: dict[str, metrics.Curve]  # name -> pooled threshold curve
  macro_curves: dict[str, np.ndarray]  # name -> macro-F1 over edges


def _subset(stats: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
  # Per-tag arrays are cut to the group; scalars (image count, box scores) are the whole pass's.
  return {k: (v if np.ndim(v) == 0 else v[index]) for k, v in stats.items()}


def _nanmean(x: np.ndarray) -> float:
  x = x[~np.isnan(x)]
  return float(x.mean()) if len(x) else float("nan")


def summarise(stats: dict[str, np.ndarray], tags: vocab_lib.TagVocab, *, threshold: float) -> Report:
  """Metrics for every category group. Keys per group:
    tags, tags_evaluated, images;
    at `threshold` (exact counts): micro/macro precision, recall, f1, mcc;
    p_eq_r_{threshold,precision,recall,f1,macro_f1}: where pooled precision = recall;
    best_{threshold,precision,recall,f1,macro_f1}: the edge maximising pooled (micro) F1;
    best_macro_threshold, best_macro_f1: the one edge maximising macro F1;
    map (mean per-tag AP), micro_ap, auc (mean per-tag AUC-ROC), micro_auc;
    elementwise_accuracy (at `threshold`), ece (expected calibration error of the pooled scores);
    mcut_micro_f1, mcut_macro_f1 (per-image MCut over all tags, scored on this group's tags).
  Means run over tags with positives in the split (AUC: with positives and negatives)."""
  num_images = int(stats["num_images"])
  num_bins = stats["pos_hist"].shape[-1]
  per_tag = {"support": stats["support"].astype(np.int64)}
  tp, fp, fn = (stats[k].astype(np.float64) for k in ("tp", "fp", "fn"))
  per_tag["precision"] = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
  per_tag["recall"] = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
  per_tag["f1"] = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
  categories, curves, macro_curves = {}, {}, {}
  for name, index in category_groups(tags):
    sub = _subset(stats, index)
    tag_curves = metrics.per_tag_curves(sub["pos_hist"], sub["neg_hist"])
    if name == ALL:
      per_tag.update({k: tag_curves[k] for k in ("ap", "auc", "best_threshold", "best_f1")})
    curve = metrics.threshold_curve(sub["pos_hist"], sub["neg_hist"])
    macro = tag_curves["macro_f1_curve"]
    entry: dict[str, Any] = {"tags": int(len(index)), "images": num_images}
    entry.update(metrics.threshold_scores(sub, num_images))
    for prefix, point in (("p_eq_r", metrics.precision_equals_recall(curve)), ("best", metrics.best_f1(curve))):
      entry.update(point.as_dict(prefix))
      entry[f"{prefix}_macro_f1"] = (float(macro[round(point.threshold * num_bins)])
                                     if not math.isnan(point.threshold) else 0.0)
    k = int(np.argmax(macro))
    entry["best_macro_threshold"] = float(curve.thresholds[k]) if entry["tags_evaluated"] else float("nan")
    entry["best_macro_f1"] = float(macro[k])
    entry["map"] = _nanmean(tag_curves["ap"])
    entry["micro_ap"] = float(metrics.average_precision(sub["pos_hist"].sum(0), sub["neg_hist"].sum(0)))
    entry["auc"] = _nanmean(tag_curves["auc"])
    entry["micro_auc"] = float(metrics.roc_auc(sub["pos_hist"].sum(0), sub["neg_hist"].sum(0)))
    entry["ece"] = metrics.expected_calibration_error(sub["pos_hist"], sub["neg_hist"])
    entry.update(metrics.mcut_scores(sub))
    categories[name] = entry
    curves[name] = curve
    macro_curves[name] = macro
  return Report(categories, per_tag, curves, macro_curves)


TABLE_COLUMNS = (
    # (header, key, format)
    ("category", None, "{}"),
    ("tags", None, "{}"),  # evaluated (with positives) / in the category
    ("P@t", "micro_precision", "{:.4f}"),
    ("R@t", "micro_recall", "{:.4f}"),
    ("F1@t", "micro_f1", "{:.4f}"),
    ("mF1@t", "macro_f1", "{:.4f}"),
    ("P=R thr", "p_eq_r_threshold", "{:.4f}"),
    ("F1@P=R", "p_eq_r_f1", "{:.4f}"),
    ("best thr", "best_threshold", "{:.4f}"),
    ("best F1", "best_f1", "{:.4f}"),
    ("mAP", "map", "{:.4f}"),
    ("AUC", "auc", "{:.4f}"),
    ("MCC@t", "mcc", "{:.4f}"),
    ("MCut F1", "mcut_micro_f1", "{:.4f}"),
)


def category_table(categories: dict[str, dict[str, Any]], *, threshold: float) -> str:
  """A fixed-width text table, one row per category group."""
  rows = [[h for h, _, _ in TABLE_COLUMNS]]
  for name, entry in categories.items():
    row = [name, f"{entry['tags_evaluated']}/{entry['tags']}"]
    for _, key, fmt in TABLE_COLUMNS[2:]:
      value = entry[key]
      row.append("-" if isinstance(value, float) and math.isnan(value) else fmt.format(value))
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  note = (f"@t: at threshold {threshold:g} (micro; mF1 = macro F1); P=R and best: pooled-F1 operating "
          "points; mAP/AUC: means over tags with positives; MCut: per-image cut, micro F1")
  return "\n".join(lines + [note])


PER_TAG_COLUMNS = ("index", "tag", "category", "count", "train_count", "precision", "recall", "f1", "ap", "auc",
                   "best_threshold", "best_f1")


def per_tag_rows(report: Report, tags: vocab_lib.TagVocab) -> list[list[Any]]:
  """Rows for the per-tag CSV (header PER_TAG_COLUMNS): `count` is the tag's positives in the
  evaluated split, `train_count` the count in selected_tags.csv; empty cells where undefined."""
  fmt = lambda x: "" if math.isnan(x) else f"{x:.6g}"
  p = report.per_tag
  return [[i, tag.name, vocab_lib.category_name(tag.category), int(p["support"][i]), tag.count, fmt(p["precision"][i]),
           fmt(p["recall"][i]), fmt(p["f1"][i]), fmt(p["ap"][i]), fmt(p["auc"][i]), fmt(p["best_threshold"][i]),
           fmt(p["best_f1"][i])] for i, tag in enumerate(tags)]
