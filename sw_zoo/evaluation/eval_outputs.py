"""What `sw-zoo eval` writes into its output directory, each file atomically:

  eval_summary.json    the summary (strict JSON: undefined metrics are null)
  per_tag.csv          tag, category, count, P, R, F1 (at the threshold), AP, AUC, best threshold
  thresholds.json      suggested threshold per category
  pr_curve.png, f1_vs_threshold.png, tag_f1_vs_frequency.png   (unless plots=False)
  box_best_worst.png   with a box head: the best and worst box predictions by IoU (labelled box
                       green, prediction red)
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from sw_zoo.data import contact_sheet
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.data.atomic_file import atomic_write_csv, atomic_write_text
from sw_zoo.evaluation import box_metrics, report, thresholds
from sw_zoo.evaluation import plots as plots_lib


def _json_safe(value: Any) -> Any:
  """NaN (an undefined metric) -> null, so the file is strict JSON."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def is_eval_dir(path: str) -> bool:
  """Whether `path` holds an earlier `sw-zoo eval` output (its eval_summary.json)."""
  return os.path.isfile(os.path.join(path, "eval_summary.json"))


BOX_PICTURE = "box_best_worst.png"


def write_box_picture(path: str, extremes: box_metrics.Extremes) -> None:
  """One sheet: the best predictions first, then the worst, each captioned with its IoU and id."""
  cells = []
  for kind, rows in (("best", extremes.best()), ("worst", extremes.worst())):
    for rank, (example_id, image, pred, true, iou) in enumerate(rows, 1):
      words = [f"{kind}", f"#{rank}:", f"IoU {iou:.3f},", f"id {example_id}"]
      cells.append((box_metrics.draw(image, pred, true), words))
  contact_sheet.render(cells, path, text_lines=2)


def write(out_dir: str, summary: dict[str, Any], rep: report.Report, tags: vocab_lib.TagVocab,
          suggested: dict[str, Any], *, threshold: float, plots: bool = True,
          box_extremes: box_metrics.Extremes | None = None) -> list[str]:
  """Writes the files listed in the module docstring; returns their names."""
  os.makedirs(out_dir, exist_ok=True)
  atomic_write_text(os.path.join(out_dir, "eval_summary.json"), json.dumps(_json_safe(summary), indent=2) + "\n")
  atomic_write_csv(os.path.join(out_dir, "per_tag.csv"), report.PER_TAG_COLUMNS, report.per_tag_rows(rep, tags))
  thresholds.write(os.path.join(out_dir, "thresholds.json"), suggested)
  written = ["eval_summary.json", "per_tag.csv", "thresholds.json"]
  if plots:
    written += [os.path.basename(p) for p in plots_lib.write_all(rep, tags, out_dir, threshold=threshold)]
  if box_extremes is not None and box_extremes.best():
    write_box_picture(os.path.join(out_dir, BOX_PICTURE), box_extremes)
    written.append(BOX_PICTURE)
  return written
