"""`sw-zoo pareto RUN...`: F1 against throughput over several runs, Pareto front marked (the
selection SW-CV-ModelZoo describes for its size x activation sweep: release the networks on the
front between throughput and F1).

  sw-zoo pareto runs/l0_silu runs/l1_silu runs/l2_silu runs/l0_relu --out runs/pareto
  sw-zoo pareto runs/* --metric best_f1 --throughput train --category general

Each RUN is a workdir or an eval output directory (see sw_zoo/evaluation/pareto.py for where
the numbers come from). Writes pareto.png and pareto.csv to --out and prints the table.
"""
from __future__ import annotations

from sw_zoo.cli import common

import argparse
import os

from sw_zoo.evaluation import pareto


def build_parser() -> argparse.ArgumentParser:
  p = common.parser("sw-zoo pareto", __doc__, epilog=False)
  p.add_argument("runs", nargs="+", metavar="RUN", help="workdirs, eval output directories or eval_summary.json files")
  p.add_argument("--metric", default="p_eq_r_f1",
                 help="summary key on the quality axis: p_eq_r_f1 (default, WD-style), best_f1, micro_f1 (at the "
                 "eval threshold; the only one a trainer's own summary has), macro_f1, map, ...")
  p.add_argument("--category", help="take the metric from this category of `sw-zoo eval` (e.g. general)")
  p.add_argument("--throughput", choices=sorted(pareto.THROUGHPUT_KEYS), default="eval",
                 help="eval: images/s of the forward pass (from `sw-zoo eval`); train: the trainer's images/s")
  p.add_argument("--split", default="validation", help="which eval_<split> directory to read (default: validation)")
  p.add_argument("--out", default=".", help="directory for pareto.png and pareto.csv (default: .)")
  return p


def _is_own_csv(path: str) -> bool:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.readline().startswith("run,")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  speed_key = pareto.THROUGHPUT_KEYS[args.throughput]
  rows = pareto.compare(args.runs, metric=args.metric, throughput=args.throughput, category=args.category,
                        split=args.split)
  metric_label = f"{args.category} {args.metric}" if args.category else args.metric
  csv_path = os.path.join(args.out, "pareto.csv")
  if os.path.exists(csv_path) and not _is_own_csv(csv_path):
    raise FileExistsError(f"{csv_path} exists and was not written by sw-zoo pareto; choose another --out")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "pareto.csv"), "w", encoding="utf-8", newline="") as f:
    f.write(pareto.csv_text(rows, args.metric, speed_key))
  pareto.plot(rows, os.path.join(args.out, "pareto.png"), metric_label=metric_label, speed_label=speed_key)
  print(pareto.table(rows, metric_label, speed_key))
  print(f"Wrote pareto.png and pareto.csv to {os.path.abspath(args.out)}")
  return 0
