"""Tag vocabulary: `selected_tags.csv`, the label index <-> tag mapping.

The file format is the one WD-tagger tools read: header `tag_id,name,category,count`, one row per
label, row order = label index (= model output index). `tag_id` is the source site's tag id
(0 when unknown), `count` the number of training posts carrying the tag.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Iterator, Sequence

import numpy as np

from sw_zoo.data.atomic_file import atomic_write_text

# Danbooru / WD-tagger category codes. Other sites (e621) use further codes; any non-negative
# int is accepted so their vocabularies load unchanged.
CATEGORY_GENERAL = 0
CATEGORY_ARTIST = 1
CATEGORY_COPYRIGHT = 3
CATEGORY_CHARACTER = 4
CATEGORY_META = 5
CATEGORY_RATING = 9
CATEGORY_SPECIES = 10  # e621's (its own code 5 is Danbooru's meta); data_prep.sources.e621 maps it here
CATEGORY_NAMES = {
    CATEGORY_GENERAL: "general",
    CATEGORY_ARTIST: "artist",
    CATEGORY_COPYRIGHT: "copyright",
    CATEGORY_CHARACTER: "character",
    CATEGORY_META: "meta",
    CATEGORY_RATING: "rating",
    CATEGORY_SPECIES: "species",
}

CSV_HEADER = ("tag_id", "name", "category", "count")


def category_name(code: int) -> str:
  """The name of a category code: 'general', 'character', ... and 'category_<code>' for codes
  without a name, so every report, bundle and threshold table spells a category one way."""
  return CATEGORY_NAMES.get(int(code), f"category_{int(code)}")


@dataclasses.dataclass(frozen=True)
class Tag:
  name: str
  category: int
  count: int = 0
  tag_id: int = 0


class TagVocab:
  """An ordered, immutable list of tags; position in the list is the label index."""

  def __init__(self, tags: Sequence[Tag]):
    self._tags = tuple(tags)
    self._index = {}
    for i, tag in enumerate(self._tags):
      if not tag.name:
        raise ValueError(f"tag at label index {i} has an empty name")
      if tag.name in self._index:
        raise ValueError(f"duplicate tag name {tag.name!r} at label indices "
                         f"{self._index[tag.name]} and {i}")
      self._index[tag.name] = i
    self.names: list[str] = [t.name for t in self._tags]
    self.categories: np.ndarray = np.array([t.category for t in self._tags], dtype=np.int32)
    self.counts: np.ndarray = np.array([t.count for t in self._tags], dtype=np.int64)

  def __len__(self) -> int:
    return len(self._tags)

  def __getitem__(self, index: int) -> Tag:
    return self._tags[index]

  def __iter__(self) -> Iterator[Tag]:
    return iter(self._tags)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, TagVocab) and self._tags == other._tags

  def __repr__(self) -> str:
    per_category = {category_name(c): int(n)
                    for c, n in zip(*np.unique(self.categories, return_counts=True))}
    return f"TagVocab({len(self)} tags, {per_category})"

  def index(self, name: str) -> int:
    """Label index of tag `name`; KeyError naming the tag if absent."""
    try:
      return self._index[name]
    except KeyError:
      raise KeyError(f"tag {name!r} is not in the vocabulary") from None

  def __contains__(self, name: object) -> bool:
    return name in self._index

  def category_indices(self, category: int) -> np.ndarray:
    """Label indices of all tags in `category` (e.g. to score ratings separately)."""
    return np.flatnonzero(self.categories == category)


def _parse_int(value: str | None, column: str, where: str) -> int:
  try:
    parsed = int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: column {column!r} must be an integer, got {value!r}") from None
  if parsed < 0:
    raise ValueError(f"{where}: column {column!r} must be non-negative, got {parsed}")
  return parsed


def read_selected_tags(path: str | os.PathLike) -> TagVocab:
  """Reads a WD-style `selected_tags.csv`; errors name the file and line."""
  path = os.fspath(path)
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in CSV_HEADER if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}:1: header {reader.fieldnames} lacks columns {missing}; "
                       f"expected {','.join(CSV_HEADER)}")
    tags = []
    names = {}
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if None in row or any(row[c] is None for c in CSV_HEADER):
        raise ValueError(f"{where}: wrong number of fields ({row})")
      name = row["name"]
      if not name:
        raise ValueError(f"{where}: empty tag name")
      if name in names:
        raise ValueError(f"{where}: duplicate tag name {name!r} (first on line {names[name]})")
      names[name] = reader.line_num
      tags.append(Tag(name=name,
                      category=_parse_int(row["category"], "category", where),
                      count=_parse_int(row["count"], "count", where),
                      tag_id=_parse_int(row["tag_id"], "tag_id", where)))
  if not tags:
    raise ValueError(f"{path}: no tags")
  return TagVocab(tags)


def write_selected_tags(path: str | os.PathLike, vocab: TagVocab | Sequence[Tag]) -> None:
  """Writes `selected_tags.csv` atomically, rows in label-index order."""
  buffer = io.StringIO()
  # "\n" line endings: pandas/csv readers in WD tools accept both, and it keeps diffs clean.
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(CSV_HEADER)
  for tag in vocab:
    writer.writerow((tag.tag_id, tag.name, tag.category, tag.count))
  atomic_write_text(path, buffer.getvalue())
