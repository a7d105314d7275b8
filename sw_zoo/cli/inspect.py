"""`sw-zoo inspect DATA` (also `python -m data_prep inspect DATA`): what a dataset holds."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="sw-zoo inspect", description="Print examples per split, tags per category, the most and "
                              "least frequent tags and the skip report of a dataset, and "
                              "render decoded samples with their tags as a PNG.")
  p.add_argument("data_dir", help="a dataset directory (with dataset.json)")
  p.add_argument("--samples", type=int, default=16, help="images in the contact sheet; 0: none")
  p.add_argument("--out", default=None,
                 help="contact sheet path (default: <dataset name>_<split>_samples.png here)")
  p.add_argument("--split", default="validation", help="split to sample (validation)")
  p.add_argument("--top", type=int, default=20, help="tags shown at each end of the list (20)")
  p.add_argument("--scan", action="store_true",
                 help="also read every record for per-split label statistics")
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  from data_prep.inspect_data import inspect

  inspect(args.data_dir, samples=args.samples, out=args.out, split=args.split, top=args.top, scan=args.scan)
  return 0
