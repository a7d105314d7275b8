"""Suggested decision thresholds per tag category, in the JSON shape bundles carry:

  {"method": "best_f1",            # or "p_eq_r"
   "default": 0.37,                # for tags of a category not listed (from all tags pooled)
   "by_category": {"rating": 0.5, "general": 0.35, "character": 0.85},
   "split": "validation", "bins": 1024}

A consumer picks `by_category[category name]`, else `default`. Category names are those of
`sw_zoo.data.vocab.CATEGORY_NAMES` (unknown codes: "category_<code>").
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from sw_zoo.data.atomic_file import atomic_write_text
from sw_zoo.evaluation.report import ALL

# The threshold used when nothing else sets one (a bundle without thresholds, `sw-zoo eval` of a
# source without one): WD taggers' customary general threshold. A training config's
# `eval.threshold` is that experiment's own choice (0.4 in configs/common.py).
DEFAULT_THRESHOLD = 0.35

METHODS = {"best_f1": "best_threshold", "p_eq_r": "p_eq_r_threshold"}


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
