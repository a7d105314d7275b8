"""`sw-zoo folds DATA --folds K --out DIR`: K datasets for cross-validated predictions.

`DIR/fold-<k>` holds DATA's selected_tags.csv, a `validation` split = fold k of DATA's train
split and a `train` split = the other folds (records copied as they are, labels unchanged).
Folds are a hash of the record id, so they do not follow shard order. A finished fold is kept
when the command is run again (an interrupted run resumes). Train one model per fold and let
each predict its own validation split: see `sw-zoo find-missing-tags --help`.
"""
from __future__ import annotations

import argparse

from sw_zoo import progress
from sw_zoo.curation import folds
from sw_zoo.data.dataset_info import read_dataset_info


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="sw-zoo folds", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("data", help="dataset directory")
  parser.add_argument("--folds", type=int, default=2, help="number of folds (2)")
  parser.add_argument("--out", required=True, help="directory for fold-0 .. fold-K-1")
  parser.add_argument("--split", default="train", help="split to divide (train)")
  parser.add_argument("--shard-size", type=int, default=2000, help="records per shard (2000)")
  parser.add_argument("--force", action="store_true",
                      help="replace --out even if it holds something else (never its own inputs)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  n = int(read_dataset_info(args.data)["splits"][args.split]["num_examples"])
  with progress.bar(n * max(args.folds, 0), "writing folds", unit="rec", enabled=not args.no_progress) as bar:
    made = folds.make_folds(args.data, args.out, folds=args.folds, split=args.split,
                            shard_size=args.shard_size, progress=bar.update, force=args.force)
  for path in made:
    info = read_dataset_info(path)["splits"]
    print(f"{path}: train {info['train']['num_examples']}, validation {info['validation']['num_examples']}")
  return 0
