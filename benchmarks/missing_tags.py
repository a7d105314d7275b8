"""How well `sw-zoo find-missing-tags` recovers tags removed on purpose, end to end.

  python benchmarks/missing_tags.py                      # ~10 min on 2 CPU cores
  python benchmarks/missing_tags.py --folds 2 --drop 0.1 --epochs 12 --work /tmp/missing_tags

Steps, all through the `sw-zoo` commands a curator would run:
  1. `sw-zoo synthetic --drop-tag-fraction D`: the built-in dataset with each true non-rating tag
     of a training image removed with probability D (the removed tags stay in the record as
     ground truth);
  2. `sw-zoo folds --folds K`: K datasets, each holding out one fold of the training split;
  3. `sw-zoo train` the demo model (configs/demo.py) on each fold's training part, on the noisy
     labels;
  4. `sw-zoo find-missing-tags --predict-only` with each fold's model on its held-out fold;
  5. `sw-zoo find-missing-tags --predictions ...` over the whole training split: every image is
     checked by a model that never saw it.
Prints precision (flagged missing tags that were really dropped / flagged) and recall (dropped
tags flagged / dropped). Baseline: flagging every absent tag whose held-out probability is at
least 0.5 (the model's own call, no confident learning), printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sw_zoo(*args: str) -> None:
  command = [sys.executable, "-m", "sw_zoo.cli", *args]
  print("$ sw-zoo " + " ".join(args), flush=True)
  subprocess.run(command, check=True, cwd=REPO)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--work", default="/tmp/sw_zoo_missing_tags", help="working directory (kept; steps already done are reused)")
  p.add_argument("--folds", type=int, default=2)
  p.add_argument("--drop", type=float, default=0.1, help="fraction of true tags dropped from training images")
  p.add_argument("--num-train", type=int, default=10000)
  p.add_argument("--epochs", type=float, default=12.0, help="demo-model epochs per fold")
  args = p.parse_args()
  work = os.path.abspath(args.work)
  data = os.path.join(work, "data")
  start = time.time()
  sw_zoo("synthetic", "--out", data, "--num-train", str(args.num_train), "--drop-tag-fraction", str(args.drop),
         "--no-progress")
  sw_zoo("folds", data, "--folds", str(args.folds), "--out", os.path.join(work, "folds"), "--no-progress")
  predictions = []
  for k in range(args.folds):
    fold = os.path.join(work, "folds", f"fold-{k}")
    run = os.path.join(work, "runs", f"fold-{k}")
    if not os.path.isdir(os.path.join(run, "bundle")):
      sw_zoo("train", "--config", "configs/demo.py", "--workdir", run, f"--config.data.dir={fold}",
             "--config.data.synthetic.enabled=False",
             f"--config.total_epochs={args.epochs}")
    out = os.path.join(work, "predictions", f"fold-{k}")
    sw_zoo("find-missing-tags", "--data", fold, "--split", "validation", "--model", run, "--predict-only",
           "--out", out, "--no-progress")
    predictions.append(os.path.join(out, "predictions"))
  review = os.path.join(work, "review")
  sw_zoo("find-missing-tags", "--data", data, "--split", "train", "--predictions", *predictions, "--out", review,
         "--no-progress")
  with open(os.path.join(review, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  r = summary["dropped_tag_recovery"]

  # Baseline from the same held-out probabilities: every absent tag the model calls present.
  from sw_zoo.curation import predictions as predictions_lib
  from sw_zoo.curation import split_labels

  split = split_labels.read_split_labels(data, "train")
  rows, probs, cols = predictions_lib.align(split, [predictions_lib.load_predictions(p) for p in predictions])
  given = split.labels.dense(rows, cols)
  truth = split.dropped.dense(rows, cols)
  naive = (probs[0:len(rows)] >= 0.5) & ~given
  hits = int((naive & truth).sum())
  # Curators read the ranked list from the top: precision among the first flags in review order.
  import csv

  with open(os.path.join(review, "issues.csv"), newline="", encoding="utf-8") as f:
    ranked = [(int(r["id"]), r["tag"]) for r in csv.DictReader(f) if r["issue"] == "missing"]
  row_of = {int(i): r for r, i in enumerate(split.ids)}
  col_of = {name: j for j, name in enumerate(split.tags.names)}
  is_dropped = split.dropped.contains(np.array([row_of[i] for i, _ in ranked], np.int64),
                                      np.array([col_of[t] for _, t in ranked], np.int64))
  at_k = ", ".join(f"first {k}: {is_dropped[:k].mean():.3f}" for k in (100, 1000, 5000) if k <= len(ranked))
  print(f"\n{summary['images_checked']} training images x {summary['tags_checked']} tags, {r['dropped_tags']} tags "
        f"dropped ({args.drop:.0%} of true non-rating tags), {args.folds}-fold cross-validated predictions "
        f"({time.time() - start:.0f} s in all)")
  print(f"find-missing-tags (confident learning): {r['missing_flags']} flagged missing, {r['recovered']} really dropped: "
        f"precision {r['precision']:.3f}, recall {r['recall']:.3f}; also {summary['wrong']} given tags flagged wrong")
  print(f"  precision in review order (issues.csv, 'missing' rows): {at_k}")
  print(f"baseline (absent tag with p >= 0.5):     {int(naive.sum())} flagged, {hits} really dropped: "
        f"precision {hits / max(int(naive.sum()), 1):.3f}, recall {hits / max(int(truth.sum()), 1):.3f}")


if __name__ == "__main__":
  main()
