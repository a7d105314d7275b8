"""`sw-zoo pareto RUN...`: F1 against throughput over several runs, Pareto front marked (the
selection SW-CV-ModelZoo describes for its size x activation sweep: release the networks on the
front between throughput and F1).

  sw-zoo pareto runs/l0_silu runs/l1_silu runs/l2_silu runs/l0_relu --out runs/pareto
  sw-zoo pareto runs/* --metric best_f1 --throughput train --category general

Each RUN is a workdir or an eval output directory. Its numbers come from RUN/eval_summary.json
(the trainer's: micro_f1, train_images_per_s) overlaid by RUN/eval_<split>/eval_summary.json
(`sw-zoo eval`'s: P=R and best F1, eval_images_per_s, per category) when present. A run is on the
front when no other run is at least as good on both axes and better on one. Writes pareto.png and
pareto.csv to --out and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from typing import Any

THROUGHPUT_KEYS = {"eval": "eval_images_per_s", "train": "train_images_per_s"}
SUMMARY = "eval_summary.json"


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
  """For (quality, speed) pairs, higher both better: True where no other point dominates."""
  def dominates(a, b):
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])
  return [not any(dominates(q, p) for q in points) for p in points]


def _load(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_run(path: str, split: str) -> tuple[str, dict[str, Any], list[str]]:
  """(run name, merged summary, files read) for a workdir, an eval directory or a summary file."""
  path = os.path.abspath(path)
  if os.path.isfile(path):
    files = [path]
    path = os.path.dirname(path)
  else:
    files = [f for f in (os.path.join(path, SUMMARY), os.path.join(path, f"eval_{split}", SUMMARY))
             if os.path.isfile(f)]
  if not files:
    raise FileNotFoundError(f"{path}: no {SUMMARY} (train the run, or run `sw-zoo eval {path}`)")
  merged: dict[str, Any] = {}
  for f in files:
    merged.update(_load(f))
  is_eval_dir = os.path.basename(path).startswith("eval_") and "categories" in merged
  name = os.path.basename(os.path.dirname(path) if is_eval_dir else path)
  return name, merged, files


def _value(summary: dict[str, Any], key: str, category: str | None, files: list[str]) -> float:
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


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="sw-zoo pareto", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="+", metavar="RUN", help="workdirs, eval output directories or eval_summary.json files")
  p.add_argument("--metric", default="p_eq_r_f1",
                 help="summary key on the quality axis: p_eq_r_f1 (default, WD-style), best_f1, micro_f1 (at the "
                 "eval threshold; the only one a trainer's own summary has), macro_f1, map, ...")
  p.add_argument("--category", help="take the metric from this category of `sw-zoo eval` (e.g. general)")
  p.add_argument("--throughput", choices=sorted(THROUGHPUT_KEYS), default="eval",
                 help="eval: images/s of the forward pass (from `sw-zoo eval`); train: the trainer's images/s")
  p.add_argument("--split", default="validation", help="which eval_<split> directory to read (default: validation)")
  p.add_argument("--out", default=".", help="directory for pareto.png and pareto.csv (default: .)")
  return p


def _table(rows: list[dict[str, Any]], metric_label: str, speed_label: str) -> str:
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


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  speed_key = THROUGHPUT_KEYS[args.throughput]
  rows, seen = [], {}
  for run in args.runs:
    try:
      name, summary, files = read_run(run, args.split)
      metric, speed = _value(summary, args.metric, args.category, files), _value(summary, speed_key, None, files)
    except (FileNotFoundError, KeyError, ValueError) as err:
      print(f"sw-zoo pareto: {err.args[0] if err.args else err}", file=sys.stderr)
      return 2
    if name in seen:  # two runs with the same directory name: tell them apart by path
      name = os.path.relpath(os.path.abspath(run))
    seen[name] = True
    rows.append({"run": name, "metric": metric, "throughput": speed})
  for row, on_front in zip(rows, pareto_front([(r["metric"], r["throughput"]) for r in rows])):
    row["pareto"] = on_front
  rows.sort(key=lambda r: r["throughput"])
  metric_label = f"{args.category} {args.metric}" if args.category else args.metric
  os.makedirs(args.out, exist_ok=True)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["run", args.metric, speed_key, "pareto"])
  writer.writerows([r["run"], f"{r['metric']:.6g}", f"{r['throughput']:.6g}", int(r["pareto"])] for r in rows)
  with open(os.path.join(args.out, "pareto.csv"), "w", encoding="utf-8", newline="") as f:
    f.write(buffer.getvalue())
  plot(rows, os.path.join(args.out, "pareto.png"), metric_label=metric_label, speed_label=speed_key)
  print(_table(rows, metric_label, speed_key))
  print(f"Wrote pareto.png and pareto.csv to {os.path.abspath(args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
