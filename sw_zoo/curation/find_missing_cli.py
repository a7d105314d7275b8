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
import csv
import io
import json
import os
import sys
from typing import Any

import numpy as np

from sw_zoo.curation import label_issues as issues_lib
from sw_zoo.curation import split_data
from sw_zoo.data.atomic_file import atomic_write_text
from sw_zoo.data.vocab import CATEGORY_NAMES


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
  parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
  return parser


def _progress(total: int, desc: str, unit: str, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def _trained_on(tagger: Any) -> str | None:
  """The data dir the bundle's run trained on, when its config.json can still be found."""
  workdir = (tagger.bundle.config.get("source") or {}).get("workdir")
  path = os.path.join(workdir, "config.json") if workdir else None
  if not path or not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    data_dir = (json.load(f).get("data") or {}).get("dir")
  return os.path.abspath(data_dir) if data_dir else None


def _predict(args: argparse.Namespace, split: str, n: int) -> split_data.Predictions:
  from sw_zoo.pretrained import load_pretrained  # jax only when a model runs

  tagger = load_pretrained(args.model, batch_size=args.batch_size)
  trained = _trained_on(tagger)
  if split == "train" and trained == os.path.abspath(args.data) and not args.allow_in_sample:
    raise ValueError(f"{args.model} was trained on {trained}'s train split: its predictions there are in-sample "
                     "and hide label errors. Check a held-out split, use cross-validation folds (see --help), "
                     "or pass --allow-in-sample")
  out = os.path.join(args.out, "predictions")
  with _progress(n, f"predicting {split}", "img", not args.no_progress) as bar:
    return split_data.predict_split(tagger, args.data, split, out, model=tagger.bundle.path, progress=bar.update)


def _category(code: int) -> str:
  return CATEGORY_NAMES.get(int(code), str(int(code)))


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return buffer.getvalue()


def recovery(found: issues_lib.LabelIssues, rows: np.ndarray, cols: np.ndarray, dropped: split_data.SparseRows) -> dict[str, Any]:
  """Precision / recall of the deliberately dropped tags among the 'missing' flags.

  `rows`/`cols` map the analysed matrix back to the split's rows and tags; `dropped` holds the
  split's ground truth."""
  view = split_data.RowView(dropped, rows, cols)
  total = sum(int(view[a:a + 4096].sum()) for a in range(0, len(rows), 4096))
  sel = found.missing
  flags = int(sel.sum())
  hits = int(dropped.contains(rows[found.rows[sel]], cols[found.tags[sel]]).sum())
  return {"dropped_tags": total, "missing_flags": flags, "recovered": hits,
          "precision": hits / max(flags, 1), "recall": hits / max(total, 1)}


def write_report(out: str, split: split_data.SplitLabels, rows: np.ndarray, cols: np.ndarray,
                 found: issues_lib.LabelIssues, summary: dict[str, Any], *, sheet: int) -> None:
  names = [split.tags.names[c] for c in cols]
  cats = [_category(split.tags.categories[c]) for c in cols]
  issue_rows = []
  for rank, (r, t, miss, p, q) in enumerate(zip(found.rows, found.tags, found.missing, found.prob, found.quality), 1):
    row = rows[r]
    issue_rows.append([rank, int(split.ids[row]), split.sources[row], names[t], cats[t],
                       issues_lib.MISSING if miss else issues_lib.WRONG, f"{p:.4f}", f"{q:.4f}"])
  atomic_write_text(os.path.join(out, "issues.csv"), _csv_text(
      ["rank", "id", "source", "tag", "category", "issue", "prob", "label_quality"], issue_rows))

  per_image: dict[int, dict[str, Any]] = {}
  for r, t, miss, p, q in zip(found.rows, found.tags, found.missing, found.prob, found.quality):
    entry = per_image.setdefault(int(r), {"id": int(split.ids[rows[r]]), "source": split.sources[rows[r]],
                                          "worst_quality": float(q), "missing": [], "wrong": []})
    entry["missing" if miss else "wrong"].append({"tag": names[t], "category": cats[t], "prob": round(float(p), 4)})
  images = list(per_image.values())  # issues are sorted by quality, so images are in order of their worst
  atomic_write_text(os.path.join(out, "issues.json"), json.dumps({"summary": summary, "images": images}, indent=1) + "\n")

  flagged_missing = np.bincount(found.tags[found.missing], minlength=len(cols))
  flagged_wrong = np.bincount(found.tags[~found.missing], minlength=len(cols))
  pt = found.per_tag
  tag_rows = [[names[j], cats[j], int(pt.positives[j]), int(flagged_missing[j]), int(flagged_wrong[j]),
               "" if np.isnan(pt.threshold_present[j]) else f"{pt.threshold_present[j]:.4f}",
               "" if np.isnan(pt.threshold_absent[j]) else f"{pt.threshold_absent[j]:.4f}"]
              for j in np.argsort(-(flagged_missing + flagged_wrong), kind="stable")]
  atomic_write_text(os.path.join(out, "tags.csv"), _csv_text(
      ["tag", "category", "images_tagged", "flagged_missing", "flagged_wrong", "threshold_present",
       "threshold_absent"], tag_rows))

  if sheet > 0 and images:
    from sw_zoo.data import contact_sheet
    from sw_zoo.data.records import decode_image

    wanted = {e["id"]: e for e in images[:sheet]}
    cells = {}
    for record_id, _, image in split_data.record_images(split.data_dir, split.split):
      if record_id in wanted:
        e = wanted[record_id]
        words = [f"#{record_id}:"] + [f"+{m['tag']}" for m in e["missing"]] + [f"-{w['tag']}" for w in e["wrong"]]
        cells[record_id] = (decode_image(image), words)
        if len(cells) == len(wanted):
          break
    contact_sheet.render([cells[i] for i in wanted if i in cells], os.path.join(out, "suspects.png"))
  atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  split_name = args.split or ("validation" if args.model else "train")
  if args.predict_only and not args.model:
    print("sw-zoo find-missing-tags: --predict-only needs --model", file=sys.stderr)
    return 2
  try:
    splits = split_data.read_dataset_info(args.data)["splits"]
    if split_name not in splits:
      raise ValueError(f"{os.path.abspath(args.data)} has no split {split_name!r}; it has {sorted(splits)}")
    num_images = int(splits[split_name]["num_examples"])
    if args.model:
      predictions = [_predict(args, split_name, num_images)]
      if args.predict_only:
        print(f"Wrote predictions for {len(predictions[0].ids)} images to {os.path.join(args.out, 'predictions')}")
        return 0
    else:
      predictions = [split_data.load_predictions(p) for p in args.predictions]
    with _progress(num_images, f"reading {split_name} labels", "img", not args.no_progress) as bar:
      split = split_data.read_split_labels(args.data, split_name, progress=bar.update)
    rows, probs, cols = split_data.align(split, predictions)
    if args.categories:
      wanted = {c.strip() for c in args.categories.split(",") if c.strip()}
      known = {_category(c) for c in split.tags.categories}
      if wanted - known:
        raise ValueError(f"--categories: unknown {sorted(wanted - known)}; this dataset has {sorted(known)}")
      keep = np.array([_category(split.tags.categories[c]) in wanted for c in cols])
      cols, probs = cols[keep], probs.columns(keep)
    labels = split_data.RowView(split.labels, rows, cols)
    with _progress(2 * len(rows), "finding label issues (2 passes)", "img", not args.no_progress) as bar:
      found = issues_lib.find_label_issues(labels, probs, progress=bar.update)
  except (OSError, ValueError, KeyError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"sw-zoo find-missing-tags: {message}", file=sys.stderr)
    return 1

  num_missing = int(found.missing.sum())
  summary: dict[str, Any] = {
      "data": os.path.abspath(args.data), "split": split_name, "images_checked": int(len(rows)),
      "images_in_split": int(len(split.ids)), "tags_checked": int(len(cols)),
      "predictions": [p.meta.get("model") for p in predictions],
      "flags": len(found), "missing": num_missing, "wrong": len(found) - num_missing,
      "images_flagged": int(len(np.unique(found.rows))),
  }
  if split.dropped is not None:
    summary["dropped_tag_recovery"] = recovery(found, rows, cols, split.dropped)
  os.makedirs(args.out, exist_ok=True)
  write_report(args.out, split, rows, cols, found, summary, sheet=args.sheet)
  print(f"Checked {summary['images_checked']} images x {summary['tags_checked']} tags of {args.data} ({split_name}): "
        f"{num_missing} probably missing tags, {summary['wrong']} probably wrong tags on "
        f"{summary['images_flagged']} images -> {os.path.join(args.out, 'issues.csv')}")
  if "dropped_tag_recovery" in summary:
    r = summary["dropped_tag_recovery"]
    print(f"Deliberately dropped tags: {r['dropped_tags']}; recovered {r['recovered']} "
          f"(precision {r['precision']:.3f}, recall {r['recall']:.3f})")
  return 0
