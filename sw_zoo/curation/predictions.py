"""Out-of-sample model predictions over a dataset split, stored on disk and aligned with the
split's labels by record id.

Predictions live in a directory so that they can be memory-mapped and merged:

    predictions/
      probs.npy     float32 [N, T]  sigmoid scores, rows in record order of the split
      ids.npy       int64   [N]     record ids (rows of several prediction sets are matched by id)
      meta.json     {"tags": [...], "model": ..., "data": ..., "split": ...}
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from sw_zoo import run_dir
from sw_zoo.curation.split_labels import SplitLabels, record_images
from sw_zoo.data.atomic_file import atomic_write_text, check_output_dir, replace_dir
from sw_zoo.data.dataset_info import read_dataset_info

PREDICTIONS_FORMAT = 1

@dataclasses.dataclass
class Predictions:
  ids: np.ndarray  # int64 [N]
  probs: np.ndarray  # float32 [N, T] (possibly a read-only memmap)
  tags: list[str]  # [T] tag names of the columns
  meta: dict[str, Any]


def predict_split(tagger: Any, data_dir: str, split: str, out_dir: str, *, model: str,
                  progress: Callable[[int], None] | None = None, force: bool = False) -> Predictions:
  """Scores every image of the split with `tagger` into `out_dir` (see the module docstring).

  The directory appears complete or not at all: files go to a temp sibling renamed at the end.
  """
  output = dict(is_own=lambda p: os.path.isfile(os.path.join(p, "meta.json")), what="predictions", force=force,
                protect=[data_dir])
  check_output_dir(out_dir, **output)  # before the (long) prediction pass
  data_dir = run_dir.absolute(data_dir)
  n = int(read_dataset_info(data_dir)["splits"][split]["num_examples"])

  def fill(tmp: str) -> None:
    probs = np.lib.format.open_memmap(os.path.join(tmp, "probs.npy"), mode="w+", dtype=np.float32,
                                      shape=(n, len(tagger.tags)))
    ids = np.zeros(n, np.int64)
    items = ((record_id, image) for record_id, _, image in record_images(data_dir, split))
    for row, (record_id, scores, _, _) in enumerate(tagger.iter_keyed(items)):
      probs[row] = scores
      ids[row] = record_id
      if progress:
        progress(1)
    probs.flush()
    del probs
    np.save(os.path.join(tmp, "ids.npy"), ids)
    meta = {"format": PREDICTIONS_FORMAT, "tags": list(tagger.tags.names), "model": model, "data": data_dir,
            "split": split, "num_images": n}
    atomic_write_text(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1) + "\n")

  replace_dir(out_dir, fill, **output)
  return load_predictions(out_dir)


def load_predictions(path: str) -> Predictions:
  meta_path = os.path.join(path, "meta.json")
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{path}: not a predictions directory (no meta.json; make one with "
                            "`sw-zoo find-missing-tags --model M --data D --predict-only --out DIR`)")
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  if meta.get("format") != PREDICTIONS_FORMAT:
    raise ValueError(f"{meta_path}: format {meta.get('format')!r}, this sw_zoo reads {PREDICTIONS_FORMAT}")
  probs = np.load(os.path.join(path, "probs.npy"), mmap_mode="r")
  ids = np.load(os.path.join(path, "ids.npy"))
  if probs.shape != (len(ids), len(meta["tags"])):
    raise ValueError(f"{path}: probs.npy is {probs.shape}, expected ({len(ids)}, {len(meta['tags'])}) "
                     "from ids.npy and meta.json")
  return Predictions(ids, probs, list(meta["tags"]), meta)


class AlignedProbs:
  """Row-sliceable [M, T'] probabilities of the split rows covered by one or more prediction
  sets, read lazily from their (memory-mapped) probs.npy in split row order."""

  def __init__(self, predictions: list[Predictions], which: np.ndarray, pred_rows: np.ndarray,
               pred_cols: np.ndarray):
    self.predictions, self.which, self.pred_rows, self.pred_cols = predictions, which, pred_rows, pred_cols
    self.shape = (len(which), len(pred_cols))

  def columns(self, keep: np.ndarray) -> "AlignedProbs":
    """The same rows with only the columns where `keep` (bool [T']) is set."""
    return AlignedProbs(self.predictions, self.which, self.pred_rows, self.pred_cols[keep])

  def __getitem__(self, index: slice) -> np.ndarray:
    which, pred_rows = self.which[index], self.pred_rows[index]
    out = np.empty((len(which), len(self.pred_cols)), np.float32)
    for s, p in enumerate(self.predictions):
      mask = which == s
      if mask.any():
        out[mask] = np.asarray(p.probs[pred_rows[mask]])[:, self.pred_cols]
    return out


def align(split: SplitLabels, predictions: list[Predictions]) -> tuple[np.ndarray, AlignedProbs, np.ndarray]:
  """Rows of the split covered by the predictions, their probabilities, and the tag columns
  shared by the dataset and the model.

  Returns (rows [M] into the split, increasing; probabilities [M, T'] row-sliceable; tag columns
  [T'] into the split's vocabulary). Every prediction set must use the same tag list; an image
  predicted twice (overlapping folds) is an error.
  """
  if not predictions:
    raise ValueError("no predictions given")
  names = predictions[0].tags
  for p in predictions[1:]:
    if p.tags != names:
      raise ValueError(f"prediction sets disagree on tags ({p.meta.get('model')} vs "
                       f"{predictions[0].meta.get('model')})")
  model_col = {name: i for i, name in enumerate(names)}
  split_cols = np.array([j for j, name in enumerate(split.tags.names) if name in model_col], np.int64)
  if not len(split_cols):
    raise ValueError(f"none of {split.data_dir}'s tags are outputs of the model")
  pred_cols = np.array([model_col[split.tags.names[j]] for j in split_cols], np.int64)
  order = np.argsort(split.ids, kind="stable")
  sorted_ids = split.ids[order]
  which = np.full(len(split.ids), -1, np.int64)
  pred_row = np.zeros(len(split.ids), np.int64)
  for s, p in enumerate(predictions):
    pos = np.searchsorted(sorted_ids, p.ids)
    found = (pos < len(sorted_ids)) & (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == p.ids)
    rows = order[pos[found]]
    taken = which[rows] >= 0
    if taken.any():
      raise ValueError(f"record id {int(split.ids[rows[taken][0]])} is predicted by more than one "
                       "prediction set")
    which[rows] = s
    pred_row[rows] = np.flatnonzero(found)
  rows = np.flatnonzero(which >= 0)
  if not len(rows):
    raise ValueError(f"no predicted record id is in {split.data_dir} split {split.split!r}")
  return rows, AlignedProbs(predictions, which[rows], pred_row[rows], pred_cols), split_cols
