"""The report of `sw-zoo find-missing-tags`: which flags were raised, per image and per tag, as
CSV / JSON and a contact sheet, plus the recovery figures when the split carries the tags dropped
on purpose, and the guard against checking a split with in-sample predictions."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from sw_zoo import run_dir, storage
from sw_zoo.curation import label_issues as issues_lib
from sw_zoo.curation import split_labels
from sw_zoo.data.atomic_file import atomic_write_csv, atomic_write_text
from sw_zoo.data.vocab import category_name


def trained_on(tagger: Any) -> str | None:
  """The data dir the bundle's run trained on, when its config.json can still be found."""
  workdir = (tagger.bundle.config.get("source") or {}).get("workdir")
  path = storage.join(workdir, run_dir.CONFIG_FILE) if workdir else None
  if not path or not storage.isfile(path):  # a gs:// run's config is read from the bucket
    return None
  data_dir = (run_dir.read_json(path).get("data") or {}).get("dir")
  # A relative data dir is relative to where the run was started, which is not known here;
  # the run's workdir is the best guess (runs are usually started from the project root).
  return run_dir.absolute(data_dir) if data_dir else None


REPORT_FILES = ("issues.csv", "issues.json", "tags.csv", "suspects.png", "summary.json", "predictions")


def is_report_dir(path: str) -> bool:
  """Whether `path` holds only what find-missing-tags writes (a previous report, its predictions)."""
  return set(os.listdir(path)) <= set(REPORT_FILES)


def refuse_in_sample(tagger: Any, model_name: str, data_dir: str, split: str) -> None:
  """A model's predictions on the split it trained on hide label errors: refuse them."""
  trained = trained_on(tagger)
  if split == "train" and trained == run_dir.absolute(data_dir):
    raise ValueError(f"{model_name} was trained on {trained}'s train split: its predictions there are in-sample "
                     "and hide label errors. Check a held-out split, use cross-validation folds (see --help), "
                     "or pass --allow-in-sample")


def recovery(found: issues_lib.LabelIssues, rows: np.ndarray, cols: np.ndarray, dropped: split_labels.SparseRows) -> dict[str, Any]:
  """Precision / recall of the deliberately dropped tags among the 'missing' flags.

  `rows`/`cols` map the analysed matrix back to the split's rows and tags; `dropped` holds the
  split's ground truth."""
  view = split_labels.RowView(dropped, rows, cols)
  total = sum(int(view[a:a + 4096].sum()) for a in range(0, len(rows), 4096))
  sel = found.missing
  flags = int(sel.sum())
  hits = int(dropped.contains(rows[found.rows[sel]], cols[found.tags[sel]]).sum())
  return {"dropped_tags": total, "missing_flags": flags, "recovered": hits,
          "precision": hits / max(flags, 1), "recall": hits / max(total, 1)}


def write_report(out: str, split: split_labels.SplitLabels, rows: np.ndarray, cols: np.ndarray,
                 found: issues_lib.LabelIssues, summary: dict[str, Any], *, sheet: int) -> None:
  names = [split.tags.names[c] for c in cols]
  cats = [category_name(split.tags.categories[c]) for c in cols]
  issue_rows = []
  for rank, (r, t, miss, p, q) in enumerate(zip(found.rows, found.tags, found.missing, found.prob, found.quality), 1):
    row = rows[r]
    issue_rows.append([rank, int(split.ids[row]), split.sources[row], names[t], cats[t],
                       issues_lib.MISSING if miss else issues_lib.WRONG, f"{p:.4f}", f"{q:.4f}"])
  atomic_write_csv(os.path.join(out, "issues.csv"),
                   ["rank", "id", "source", "tag", "category", "issue", "prob", "label_quality"], issue_rows)

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
  atomic_write_csv(os.path.join(out, "tags.csv"),
                   ["tag", "category", "images_tagged", "flagged_missing", "flagged_wrong", "threshold_present",
                    "threshold_absent"], tag_rows)

  if sheet > 0 and images:
    from sw_zoo.data import contact_sheet
    from sw_zoo.data.records import decode_image

    wanted = {e["id"]: e for e in images[:sheet]}
    cells = {}
    for record_id, _, image in split_labels.record_images(split.data_dir, split.split):
      if record_id in wanted:
        e = wanted[record_id]
        words = [f"#{record_id}:"] + [f"+{m['tag']}" for m in e["missing"]] + [f"-{w['tag']}" for w in e["wrong"]]
        cells[record_id] = (decode_image(image), words)
        if len(cells) == len(wanted):
          break
    contact_sheet.render([cells[i] for i in wanted if i in cells], os.path.join(out, "suspects.png"))
  atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1) + "\n")
