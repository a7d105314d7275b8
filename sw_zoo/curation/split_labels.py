"""The given labels of a dataset split as the curation tools read them: record ids, sources and
tags as sparse rows (a booru split is too large for a dense images x tags matrix), plus the
split's encoded images in the same record order."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import grain.python as grain
import numpy as np

from sw_zoo import run_dir
from sw_zoo.data.dataset_info import read_dataset_info, selected_tags_path, split_paths
from sw_zoo.data.records import decode_record
from sw_zoo.data.vocab import TagVocab, read_selected_tags


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


def read_split_labels(data_dir: str, split: str, *,
                      progress: Callable[[int], None] | None = None) -> SplitLabels:
  """Reads every record's id, source and tags (not the images)."""
  data_dir = run_dir.absolute(data_dir)
  info = read_dataset_info(data_dir)
  if split not in info["splits"]:
    raise KeyError(f"{data_dir}: no split {split!r}; it has {sorted(info['splits'])}")
  tags = read_selected_tags(selected_tags_path(data_dir))
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
  for record in _records(run_dir.absolute(data_dir), split):
    yield record["id"], record["source"], record["image"]
