"""Suggested decision thresholds per tag category, in the JSON shape bundles carry:

  {"method": "best_f1",            # or "p_eq_r"
   "default": 0.37,                # for tags of a category not listed (from all tags pooled)
   "by_category": {"rating": 0.5, "general": 0.35, "character": 0.85},
   "split": "validation", "bins": 1024}

A consumer picks `by_tag[tag name]` (present only when per-tag thresholds were asked for), else
`by_category[category name]`, else `default`. Category names are those of
`sw_zoo.data.vocab.CATEGORY_NAMES` (unknown codes: "category_<code>").
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from sw_zoo.data import vocab as vocab_lib
from sw_zoo.data.atomic_file import atomic_write_text
from sw_zoo.evaluation import report
from sw_zoo.evaluation.report import ALL

# The threshold used when nothing else sets one (a bundle without thresholds, `sw-zoo eval` of a
# source without one): WD taggers' customary general threshold. A training config's
# `eval.threshold` is that experiment's own choice (0.4 in configs/common.py).
DEFAULT_THRESHOLD = 0.35

METHODS = {"best_f1": "best_threshold", "p_eq_r": "p_eq_r_threshold"}
TUNE_METHODS = ("best_f1", "p_eq_r", "none")  # config.eval.tune_thresholds


def suggest(categories: dict[str, dict[str, Any]], *, method: str, split: str, bins: int) -> dict[str, Any]:
  """Thresholds from `report.summarise(...).categories`; categories without positives in the
  split (no defined threshold) are left out and fall back to `default`."""
  if method not in METHODS:
    raise ValueError(f"threshold method {method!r}: expected one of {sorted(METHODS)}")
  key = METHODS[method]
  by_category = {name: float(entry[key]) for name, entry in categories.items()
                 if name != ALL and not math.isnan(entry[key])}
  default = categories[ALL][key]
  return {"method": method, "default": None if math.isnan(default) else float(default),
          "by_category": by_category, "split": split, "bins": int(bins)}


def with_per_tag(thresholds: dict[str, Any], rep: Any, tags: vocab_lib.TagVocab, *, min_count: int) -> dict[str, Any]:
  """`thresholds` plus `by_tag`: each tag's best-F1 threshold (`rep.per_tag`), for tags with at
  least `min_count` positives in the split (fewer make a noisy choice; those keep their
  category's). Ratings are left out: they are reported as scores, not cut."""
  if min_count <= 0:
    return thresholds
  best, support = rep.per_tag["best_threshold"], rep.per_tag["support"]
  by_tag = {name: round(float(best[i]), 6) for i, name in enumerate(tags.names)
            if support[i] >= min_count and not math.isnan(best[i])
            and int(tags.categories[i]) != vocab_lib.CATEGORY_RATING}
  return {**thresholds, "by_tag": by_tag, "per_tag_min_count": int(min_count)}


def tune(stats: dict[str, Any], tags: vocab_lib.TagVocab, *, method: str, per_tag_min_count: int,
         threshold: float, bins: int, split: str = "validation") -> dict[str, Any] | None:
  """The `thresholds` entry of a run's bundle from its final validation pass's stats (host
  arrays): `method` per category (plus per tag, see `with_per_tag`), or None for method 'none'
  or a split without a single positive (nothing to tune on)."""
  if method not in TUNE_METHODS:
    raise ValueError(f"threshold tuning {method!r}: expected one of {TUNE_METHODS}")
  if method == "none":
    return None
  rep = report.summarise(stats, tags, threshold=threshold)
  tuned = suggest(rep.categories, method=method, split=split, bins=bins)
  if tuned["default"] is None:
    return None
  return with_per_tag(tuned, rep, tags, min_count=per_tag_min_count)


def describe(thresholds: dict[str, Any]) -> str:
  """'best_f1 thresholds (general 0.312, character 0.705, 40 per-tag)' for logs."""
  shown = ", ".join(f"{k} {v:.3f}" for k, v in thresholds["by_category"].items() if k != "rating")
  per_tag = f", {len(thresholds['by_tag'])} per-tag" if thresholds.get("by_tag") else ""
  return f"{thresholds['method']} thresholds ({shown}{per_tag})"


def update_bundle(config_path: str, thresholds: dict[str, Any]) -> bool:
  """Replaces the `thresholds` key of a bundle's config.json (atomically: readers see the old
  file or the new one). Returns False, writing nothing, when the file has no such key."""
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  if "thresholds" not in config:
    return False
  config["thresholds"] = thresholds
  atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
  return True


def write(path: str, thresholds: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic_write_text(path, json.dumps(thresholds, indent=2) + "\n")
