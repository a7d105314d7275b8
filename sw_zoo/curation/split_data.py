"""A dataset split as the curation tools see it: record ids, sources, the given label matrix,
out-of-sample model predictions for it, and K-fold copies for cross-validation.

Predictions live in a directory so that they can be memory-mapped and merged:

    predictions/
      probs.npy     float32 [N, T]  sigmoid scores, rows in record order of the split
      ids.npy       int64   [N]     record ids (rows of several prediction sets are matched by id)
      meta.json     {"tags": [...], "model": ..., "data": ..., "split": ...}

`sw-zoo folds DATA --folds K` writes K datasets whose `validation` split is one fold of DATA's
`train` split and whose `train` split is the rest; a model trained on fold k's dataset predicts
its validation split out of sample, and the K prediction sets together cover every image.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import grain.python as grain
import numpy as np

from sw_zoo.data.atomic_file import atomic_write_text, replace_dir
from sw_zoo.data.dataset_info import (DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME, read_dataset_info, split_paths,
                                      write_dataset_info)
from sw_zoo.data.records import decode_record
from sw_zoo.data.shard_writer import ShardWriter
from sw_zoo.data.vocab import TagVocab, read_selected_tags

PREDICTIONS_FORMAT = 1


def _records(data_dir: str, split: str) -> Iterator[dict[str, Any]]:
  source = grain.ArrayRecordDataSource(split_paths(data_dir, split))
  for i in range(len(source)):
    try:
      yield decode_record(source[i])
    except ValueError as e:
      raise ValueError(f"{data_dir} split {split!r}, record {i}: {e}") from None


@dataclasses.dataclass
class SparseRows:
  """Sorted column indices per row (CSR without values): a booru split's tags, ~30 per image,
  instead of a dense images x tags matrix (9 GB of bools for 1M images x 9k tags)."""
  indptr: np.ndarray  # int64 [N + 1]
  indices: np.ndarray  # int32 [nnz]
  num_cols: int

  @property
  def nnz(self) -> int:
    return int(self.indptr[-1])

  def dense(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """bool [len(rows), len(cols)] (all columns when cols is None)."""
    rows = np.asarray(rows, np.int64)
    out = np.zeros((len(rows), self.num_cols), bool)
    lengths = self.indptr[rows + 1] - self.indptr[rows]
    which = np.repeat(np.arange(len(rows)), lengths)
    starts = np.repeat(self.indptr[rows], lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[which, self.indices[starts + offsets]] = True
    return out if cols is None else out[:, cols]

  def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """bool per (row, col) pair."""
    return np.array([c in self.indices[self.indptr[r]:self.indptr[r + 1]] for r, c in zip(rows, cols)], bool)


class RowView:
  """Dense bool row chunks of `sparse` restricted to `rows` and `cols`: what find_label_issues
  reads (`view[a:b]`)."""

  def __init__(self, sparse: SparseRows, rows: np.ndarray, cols: np.ndarray):
    self.sparse, self.rows, self.cols = sparse, np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    self.shape = (len(self.rows), len(self.cols))

  def __getitem__(self, index: slice) -> np.ndarray:
    return self.sparse.dense(self.rows[index], self.cols)


@dataclasses.dataclass
class SplitLabels:
  """The given labels of one split, rows in record order."""
  data_dir: str
  split: str
  tags: TagVocab
  ids: np.ndarray  # int64 [N]
  sources: list[str]  # [N] the record's source (original path or post id), "" when unknown
  labels: SparseRows
  dropped: SparseRows | None  # tags a generator removed on purpose (synthetic data), else None


def read_split_labels(data_dir: str, split: str, *, progress: Callable[[int], None] | None = None) -> SplitLabels:
  """Reads every record's id, source and tags (not the images)."""
  data_dir = os.path.abspath(data_dir)
  info = read_dataset_info(data_dir)
  if split not in info["splits"]:
    raise KeyError(f"{data_dir}: no split {split!r}; it has {sorted(info['splits'])}")
  tags = read_selected_tags(os.path.join(data_dir, SELECTED_TAGS_FILENAME))
  n = int(info["splits"][split]["num_examples"])
  ids = np.zeros(n, np.int64)
  sources: list[str] = []
  label_parts, dropped_parts = [], []
  for row, record in enumerate(_records(data_dir, split)):
    if row >= n:
      raise ValueError(f"{data_dir}: split {split!r} holds more records than dataset.json's num_examples={n}")
    ids[row] = record["id"]
    sources.append(record["source"])
    label_parts.append(record["labels"])
    dropped_parts.append(record["dropped"])
    if progress and row % 1024 == 1023:
      progress(1024)
  if len(sources) != n:
    raise ValueError(f"{data_dir}: split {split!r} holds {len(sources)} records, dataset.json says {n}")
  if progress:
    progress(n % 1024)

  def csr(parts: list[np.ndarray]) -> SparseRows:
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum([len(p) for p in parts])
    indices = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    if indices.size and indices.max() >= len(tags):
      raise ValueError(f"{data_dir}: a record of split {split!r} has tag index {int(indices.max())}, but "
                       f"selected_tags.csv has {len(tags)} rows")
    return SparseRows(indptr, indices, len(tags))

  dropped = csr(dropped_parts)
  return SplitLabels(data_dir, split, tags, ids, sources, csr(label_parts), dropped if dropped.nnz else None)


def record_images(data_dir: str, split: str) -> Iterator[tuple[int, str, bytes]]:
  """(id, source, encoded image bytes) of every record of the split, in order."""
  for record in _records(os.path.abspath(data_dir), split):
    yield record["id"], record["source"], record["image"]


# ---- Predictions ---------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
  ids: np.ndarray  # int64 [N]
  probs: np.ndarray  # float32 [N, T] (possibly a read-only memmap)
  tags: list[str]  # [T] tag names of the columns
  meta: dict[str, Any]


def predict_split(tagger: Any, data_dir: str, split: str, out_dir: str, *, model: str,
                  progress: Callable[[int], None] | None = None) -> Predictions:
  """Scores every image of the split with `tagger` into `out_dir` (see the module docstring).

  The directory appears complete or not at all: files go to a temp sibling renamed at the end.
  """
  data_dir = os.path.abspath(data_dir)
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

  replace_dir(out_dir, fill)
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

  def __init__(self, predictions: list[Predictions], which: np.ndarray, pred_rows: np.ndarray, pred_cols: np.ndarray):
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
      raise ValueError(f"prediction sets disagree on tags ({p.meta.get('model')} vs {predictions[0].meta.get('model')})")
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
      raise ValueError(f"record id {int(split.ids[rows[taken][0]])} is predicted by more than one prediction set")
    which[rows] = s
    pred_row[rows] = np.flatnonzero(found)
  rows = np.flatnonzero(which >= 0)
  if not len(rows):
    raise ValueError(f"no predicted record id is in {split.data_dir} split {split.split!r}")
  return rows, AlignedProbs(predictions, which[rows], pred_row[rows], pred_cols), split_cols


# ---- Folds ---------------------------------------------------------------------------------


def fold_of(record_id: int, folds: int) -> int:
  """Deterministic fold of a record id (a hash, so folds do not follow shard or id order)."""
  digest = hashlib.blake2b(int(record_id).to_bytes(8, "little", signed=True), digest_size=8).digest()
  return int.from_bytes(digest, "little") % folds


def make_folds(data_dir: str, out_dir: str, *, folds: int, split: str = "train", shard_size: int = 2000,
               progress: Callable[[int], None] | None = None) -> list[str]:
  """Writes `out_dir/fold-<k>` for k < folds: `validation` = fold k of `split`, `train` = the rest.

  A finished fold (its dataset.json present and made from the same source) is kept, so an
  interrupted run resumes; shards are written as temp files and renamed (ShardWriter).
  """
  if folds < 2:
    raise ValueError(f"--folds must be at least 2, got {folds}")
  data_dir = os.path.abspath(data_dir)
  info = read_dataset_info(data_dir)
  if split not in info["splits"]:
    raise KeyError(f"{data_dir}: no split {split!r}; it has {sorted(info['splits'])}")
  source = grain.ArrayRecordDataSource(split_paths(data_dir, split, info))
  made = []
  for k in range(folds):
    fold_dir = os.path.join(out_dir, f"fold-{k}")
    generator = {"name": "sw_zoo.curation.folds", "source": data_dir, "split": split, "folds": folds, "fold": k}
    try:
      if read_dataset_info(fold_dir).get("generator") == generator:
        made.append(fold_dir)
        if progress:
          progress(len(source))
        continue
    except (FileNotFoundError, ValueError, KeyError):
      pass
    os.makedirs(fold_dir, exist_ok=True)
    with ShardWriter(fold_dir, "train", shard_size) as train, ShardWriter(fold_dir, "validation", shard_size) as held:
      counts = {"train": 0, "validation": 0}
      for i in range(len(source)):
        raw = source[i]
        held_out = fold_of(decode_record(raw)["id"], folds) == k
        (held if held_out else train).write(raw)
        counts["validation" if held_out else "train"] += 1
        if progress:
          progress(1)
    shutil.copyfile(os.path.join(data_dir, SELECTED_TAGS_FILENAME), os.path.join(fold_dir, SELECTED_TAGS_FILENAME))
    write_dataset_info(fold_dir, {
        "schema_version": info["schema_version"], "source": f"fold {k} of {folds} of {data_dir} ({split})",
        "image_size": info["image_size"], "num_labels": info["num_labels"],
        "splits": {"train": {"num_examples": counts["train"], "shards": train.filenames},
                   "validation": {"num_examples": counts["validation"], "shards": held.filenames}},
        "generator": generator})
    made.append(fold_dir)
  return made
