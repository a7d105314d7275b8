"""`sw-zoo find-missing-tags`: which images probably miss which tags, and which given tags are
probably wrong, for a curator to review.

Held-out (a model that did not train on the split):
    sw-zoo find-missing-tags --data data/mine --split validation --model runs/l0 --out review

Cross-validated (every training image checked by a model that never saw it):
    sw-zoo folds data/mine --folds 2 --out data/mine_folds
    sw-zoo train --config configs/demo.py --config.data.dir=data/mine_folds/fold-0 --workdir runs/fold0
    sw-zoo train --config configs/demo.py --config.data.dir=data/mine_folds/fold-1 --workdir runs/fold1
    sw-zoo find-missing-tags --data data/mine_folds/fold-0 --split validation --model runs/fold0 --predict-only --out preds0
    sw-zoo find-missing-tags --data data/mine_folds/fold-1 --split validation --model runs/fold1 --predict-only --out preds1
    sw-zoo find-missing-tags --data data/mine --split train --predictions preds0/predictions preds1/predictions --out review

Writes into --out: `issues.csv` (one row per suspect image/tag pair, most suspicious first),
`issues.json` (the same grouped per image), `tags.csv` (per tag: images tagged, flags, the
confident thresholds), `suspects.png` (contact sheet of the top images: +tag = probably missing,
-tag = probably wrong), `summary.json`, and `predictions/` when it ran a model. Records that carry
the tags a generator dropped on purpose (`sw-zoo synthetic --drop-tag-fraction`) are scored:
precision and recall of the dropped tags among the 'missing' flags.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from sw_zoo import progress, run_dir, storage
from sw_zoo.curation import label_issues as issues_lib
from sw_zoo.curation import missing_tags_report as report
from sw_zoo.data.atomic_file import check_output_dir
from sw_zoo.curation import predictions as predictions_lib
from sw_zoo.curation import split_labels
from sw_zoo.data.dataset_info import read_dataset_info
from sw_zoo.data.vocab import category_name


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="sw-zoo find-missing-tags", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="dataset directory (dataset.json + shards) whose labels are checked")
  parser.add_argument("--split", default=None,
                      help="split to check (default: validation with --model, train with --predictions)")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--model", help="a bundle, a run's workdir, or a registered name; it must not have "
                                      "trained on the split (use --predictions from cross-validation folds otherwise)")
  source.add_argument("--predictions", nargs="+", metavar="DIR",
                      help="prediction directories (from --predict-only runs) covering the split, matched by record id")
  parser.add_argument("--out", default="label_review", help="output directory (label_review)")
  parser.add_argument("--predict-only", action="store_true", help="with --model: write <out>/predictions and stop")
  parser.add_argument("--categories", default=None,
                      help="comma-separated categories to check, e.g. general,character (default: every category)")
  parser.add_argument("--sheet", type=int, default=36, help="images on the contact sheet (36; 0 = none)")
  parser.add_argument("--allow-in-sample", action="store_true",
                      help="check a split the model trained on (flags are then mostly meaningless)")
  parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
  parser.add_argument("--force", action="store_true",
                      help="replace --out even if it holds something else (never its own inputs)")
  parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
  return parser


def _predict(args: argparse.Namespace, split: str, n: int) -> predictions_lib.Predictions:
  from sw_zoo.inference.pretrained import load_pretrained  # jax only when a model runs

  tagger = load_pretrained(args.model, batch_size=args.batch_size)
  if not args.allow_in_sample:
    report.refuse_in_sample(tagger, args.model, args.data, split)
  out = os.path.join(args.out, "predictions")
  with progress.bar(n, f"predicting {split}", unit="img", enabled=not args.no_progress) as bar:
    return predictions_lib.predict_split(tagger, args.data, split, out, model=storage.url_of(tagger.bundle.path) or tagger.bundle.path, progress=bar.update,
                                         force=args.force)


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if storage.is_remote(args.out):
    # gs://: checked against the bucket, written in its local mirror, uploaded when done.
    check_output_dir(args.out, is_own=report.is_report_dir, what="a find-missing-tags report", force=args.force,
                     protect=[args.data, *(args.predictions or [])])
    with storage.output_dir(args.out, owned=lambda rel: True) as local:
      return _main(argparse.Namespace(**{**vars(args), "out": local}))
  return _main(args)


def _main(args: argparse.Namespace) -> int:
  split_name = args.split or ("validation" if args.model else "train")
  if args.predict_only and not args.model:
    print("sw-zoo find-missing-tags: --predict-only needs --model", file=sys.stderr)
    return 2
  check_output_dir(args.out, is_own=report.is_report_dir, what="a find-missing-tags report", force=args.force,
                   protect=[args.data, *(args.predictions or [])])
  splits = read_dataset_info(args.data)["splits"]
  if split_name not in splits:
    raise ValueError(f"{run_dir.absolute(args.data)} has no split {split_name!r}; it has {sorted(splits)}")
  num_images = int(splits[split_name]["num_examples"])
  if args.model:
    predictions = [_predict(args, split_name, num_images)]
    if args.predict_only:
      print(f"Wrote predictions for {len(predictions[0].ids)} images to {os.path.join(args.out, 'predictions')}")
      return 0
  else:
    predictions = [predictions_lib.load_predictions(p) for p in args.predictions]
  with progress.bar(num_images, f"reading {split_name} labels", unit="img", enabled=not args.no_progress) as bar:
    split = split_labels.read_split_labels(args.data, split_name, progress=bar.update)
  rows, probs, cols = predictions_lib.align(split, predictions)
  if args.categories:
    wanted = {c.strip() for c in args.categories.split(",") if c.strip()}
    known = {category_name(c) for c in split.tags.categories}
    if wanted - known:
      raise ValueError(f"--categories: unknown {sorted(wanted - known)}; this dataset has {sorted(known)}")
    keep = np.array([category_name(split.tags.categories[c]) in wanted for c in cols])
    cols, probs = cols[keep], probs.columns(keep)
  labels = split_labels.RowView(split.labels, rows, cols)
  with progress.bar(2 * len(rows), "finding label issues (2 passes)", unit="img",
                    enabled=not args.no_progress) as bar:
    found = issues_lib.find_label_issues(labels, probs, progress=bar.update)

  num_missing = int(found.missing.sum())
  summary: dict[str, Any] = {
      "data": run_dir.absolute(args.data), "split": split_name, "images_checked": int(len(rows)),
      "images_in_split": int(len(split.ids)), "tags_checked": int(len(cols)),
      "predictions": [p.meta.get("model") for p in predictions],
      "flags": len(found), "missing": num_missing, "wrong": len(found) - num_missing,
      "images_flagged": int(len(np.unique(found.rows))),
  }
  if split.dropped is not None:
    summary["dropped_tag_recovery"] = report.recovery(found, rows, cols, split.dropped)
  os.makedirs(args.out, exist_ok=True)
  report.write_report(args.out, split, rows, cols, found, summary, sheet=args.sheet)
  print(f"Checked {summary['images_checked']} images x {summary['tags_checked']} tags of {args.data} ({split_name}): "
        f"{num_missing} probably missing tags, {summary['wrong']} probably wrong tags on "
        f"{summary['images_flagged']} images -> {os.path.join(args.out, 'issues.csv')}")
  if "dropped_tag_recovery" in summary:
    r = summary["dropped_tag_recovery"]
    print(f"Deliberately dropped tags: {r['dropped_tags']}; recovered {r['recovered']} "
          f"(precision {r['precision']:.3f}, recall {r['recall']:.3f})")
  return 0
