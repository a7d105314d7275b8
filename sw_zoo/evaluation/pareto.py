"""F1 against throughput over several runs with the Pareto front marked (the selection
SW-CV-ModelZoo describes for its size x activation sweep: release the networks on the front
between throughput and F1); `sw-zoo pareto` prints and plots it.

Each run is a workdir or an eval output directory. Its numbers come from RUN/eval_summary.json
(the trainer's: micro_f1, train_images_per_s) overlaid by RUN/eval_<split>/eval_summary.json
(`sw-zoo eval`'s: P=R and best F1, eval_images_per_s, per category) when present. A run is on the
front when no other run is at least as good on both axes and better on one.
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Any

from sw_zoo import run_dir, storage

THROUGHPUT_KEYS = {"eval": "eval_images_per_s", "train": "train_images_per_s"}
SUMMARY = run_dir.EVAL_SUMMARY_FILE


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
  """For (quality, speed) pairs, higher both better: True where no other point dominates."""
  def dominates(a, b):
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])
  return [not any(dominates(q, p) for q in points) for p in points]


def read_run(path: str, split: str) -> tuple[str, dict[str, Any], list[str]]:
  """(run name, merged summary, files read) for a workdir, an eval directory or a summary file."""
  path = run_dir.absolute(path)
  if storage.isfile(path):
    files = [path]
    path = os.path.dirname(path)
  else:  # a local or gs:// run
    files = [f for f in (storage.join(path, SUMMARY), storage.join(path, f"eval_{split}", SUMMARY))
             if storage.isfile(f)]
  if not files:
    raise FileNotFoundError(f"{path}: no {SUMMARY} (train the run, or run `sw-zoo eval {path}`)")
  merged: dict[str, Any] = {}
  for f in files:
    merged.update(run_dir.read_json(f))
  is_eval_dir = os.path.basename(path).startswith("eval_") and "categories" in merged
  name = os.path.basename(os.path.dirname(path) if is_eval_dir else path)
  return name, merged, files


def value(summary: dict[str, Any], key: str, category: str | None, files: list[str]) -> float:
  source = summary
  if category:
    source = summary.get("categories", {}).get(category)
    if source is None:
      raise KeyError(f"{', '.join(files)}: no category {category!r} (categories: "
                     f"{sorted(summary.get('categories', {}))}; run `sw-zoo eval` for per-category numbers)")
  value = source.get(key)
  if not isinstance(value, (int, float)) or math.isnan(value):
    hint = " (run `sw-zoo eval` on the run)" if key not in ("micro_f1", "train_images_per_s") else ""
    raise KeyError(f"{', '.join(files)}: no number for {key!r}{hint}")
  return float(value)


def table(rows: list[dict[str, Any]], metric_label: str, speed_label: str) -> str:
  lines = [f"| run | {metric_label} | {speed_label} | pareto |", "|---|---:|---:|:---:|"]
  for r in rows:
    lines.append(f"| {r['run']} | {r['metric']:.4f} | {r['throughput']:.1f} | {'yes' if r['pareto'] else ''} |")
  return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str, *, metric_label: str, speed_label: str) -> None:
  from matplotlib.figure import Figure  # Agg canvas, no display needed

  fig = Figure(figsize=(7, 5))
  ax = fig.add_subplot()
  off = [r for r in rows if not r["pareto"]]
  front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["throughput"])
  ax.scatter([r["throughput"] for r in off], [r["metric"] for r in off], color="tab:grey", label="dominated")
  ax.plot([r["throughput"] for r in front], [r["metric"] for r in front], "o-", color="tab:red", label="Pareto front")
  for r in rows:
    ax.annotate(r["run"], (r["throughput"], r["metric"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set(xlabel=speed_label, ylabel=metric_label, title=f"{metric_label} against {speed_label}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def compare(runs: list[str], *, metric: str, throughput: str, category: str | None = None,
            split: str = "validation") -> list[dict[str, Any]]:
  """One row per run ({'run', 'metric', 'throughput', 'pareto'}), sorted by throughput. Raises
  FileNotFoundError / KeyError / ValueError naming the run's files when a number is missing."""
  speed_key = THROUGHPUT_KEYS[throughput]
  rows, seen = [], set()
  for run in runs:
    name, summary, files = read_run(run, split)
    if name in seen:  # two runs with the same directory name: tell them apart by path
      name = os.path.relpath(os.path.abspath(run))
    seen.add(name)
    rows.append({"run": name, "metric": value(summary, metric, category, files),
                 "throughput": value(summary, speed_key, None, files)})
  for row, on_front in zip(rows, pareto_front([(r["metric"], r["throughput"]) for r in rows])):
    row["pareto"] = on_front
  return sorted(rows, key=lambda r: r["throughput"])


def csv_text(rows: list[dict[str, Any]], metric: str, speed_key: str) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["run", metric, speed_key, "pareto"])
  writer.writerows([r["run"], f"{r['metric']:.6g}", f"{r['throughput']:.6g}", int(r["pareto"])] for r in rows)
  return buffer.getvalue()
