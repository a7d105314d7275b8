"""A CSV or JSON-lines manifest: one image per row.

    path,tags,rating                      {"path": "a/1.png", "tags": ["1girl", "solo"], "rating": "g"}
    a/1.png,"1girl, solo",g               {"path": "a/2.png", "tags": "1girl long_hair"}

`tags` is a tag string (comma- or whitespace-separated, like a caption) or, in JSON, a list.
`rating` is optional. Column names are configurable; with an id column the split is taken from
the id (id % 1000), otherwise from a hash of the path as written. Relative paths are resolved
against `image_root` (default: the manifest's directory). `.csv` / `.tsv` files are read as
CSV, anything else as JSON lines.

`box_columns` names four columns holding one object's box (x0, y0, x1, y1) in `box_units`
(normalised or pixels, see data_prep.boxes); a row with all four empty (or null) has no box, a
row with a bad box is skipped as `bad_box`.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterator, Sequence

from data_prep import boxes
from data_prep.sources import (BAD_BOX, BAD_CAPTION_ENCODING, BAD_ID, BAD_METADATA, SourceItem,
                               check_id)
from data_prep.tags import RawTag, normalize_tag, parse_tag_string


def _decoded_lines(f) -> Iterator[str]:
  # Non-UTF-8 bytes survive as lone surrogates, so one bad row is rejected, not the whole file.
  for line in f:
    yield line.decode("utf-8", errors="surrogateescape")


def _has_bad_bytes(values) -> bool:
  return any(isinstance(v, str) and any("\udc80" <= ch <= "\udcff" for ch in v) for v in values)


class ManifestSource:
  kind = "manifest"

  def __init__(self, manifest: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
               path_column: str = "path", tags_column: str = "tags",
               rating_column: str | None = "rating", id_column: str | None = None,
               box_columns: Sequence[str] | str | None = None, box_units: str = "normalised"):
    self.manifest = os.path.abspath(os.fspath(manifest))
    if not os.path.isfile(self.manifest):
      raise ValueError(f"manifest {self.manifest} does not exist")
    self.image_root = os.path.abspath(os.fspath(image_root or os.path.dirname(self.manifest)))
    self.path_column, self.tags_column = path_column, tags_column
    self.rating_column, self.id_column = rating_column or None, id_column or None
    self.is_csv = self.manifest.lower().endswith((".csv", ".tsv"))
    self.split_by = "id" if self.id_column else "key"
    if isinstance(box_columns, str):
      box_columns = [c.strip() for c in box_columns.split(",")]
    self.box_columns = tuple(box_columns) if box_columns else None
    if self.box_columns is not None and (len(self.box_columns) != 4 or not all(self.box_columns)):
      raise ValueError(f"box columns must name 4 columns x0,y0,x1,y1, got {box_columns!r}")
    self.box_units = boxes.check_units(box_units)

  def describe(self) -> dict[str, Any]:
    columns = {"path": self.path_column, "tags": self.tags_column,
               "rating": self.rating_column, "id": self.id_column}
    described = {"manifest": self.manifest, "image_root": self.image_root, "columns": columns}
    if self.box_columns:  # Only then: datasets made before boxes keep their fingerprint.
      columns["box"] = list(self.box_columns)
      described["box_units"] = self.box_units
    return described

  def _rows(self) -> Iterator[tuple[str, dict | None, str | None]]:
    """(where, row dict or None, problem)."""
    name = os.path.basename(self.manifest)
    with open(self.manifest, "rb") as f:
      if self.is_csv:
        delimiter = "\t" if self.manifest.lower().endswith(".tsv") else ","
        reader = csv.DictReader(_decoded_lines(f), delimiter=delimiter)
        for column in (self.path_column, self.tags_column):
          if column not in (reader.fieldnames or ()):
            raise ValueError(f"{self.manifest}: header {reader.fieldnames} has no column "
                             f"{column!r} (set it with --path-column / --tags-column)")
        for column in self.box_columns or ():
          if column not in (reader.fieldnames or ()):
            raise ValueError(f"{self.manifest}: header {reader.fieldnames} has no box column "
                             f"{column!r} (set them with --box-columns x0,y0,x1,y1)")
        for row in reader:
          yield f"{name}:{reader.line_num}", row, None
      else:
        for n, line in enumerate(_decoded_lines(f), 1):
          if not line.strip():
            continue
          where = f"{name}:{n}"
          if _has_bad_bytes([line]):
            yield where, None, "not UTF-8"
            continue
          try:
            row = json.loads(line)
          except json.JSONDecodeError as e:
            yield where, None, f"not valid JSON: {e}"
            continue
          if not isinstance(row, dict):
            yield where, None, "not a JSON object"
            continue
          yield where, row, None

  def __iter__(self) -> Iterator[SourceItem]:
    for where, row, problem in self._rows():
      if row is None:
        reason = BAD_CAPTION_ENCODING if problem == "not UTF-8" else BAD_METADATA
        yield SourceItem(key=where, error=(reason, f"{self.manifest} {where}: {problem}"))
        continue
      path = row.get(self.path_column)
      if not isinstance(path, str) or not path.strip():
        yield SourceItem(key=where, error=(BAD_METADATA, f"{self.manifest} {where}: no "
                                           f"{self.path_column!r} value"))
        continue
      key = path.strip().replace("\\", "/")
      if _has_bad_bytes(list(row.values())):
        yield SourceItem(key=key, error=(BAD_CAPTION_ENCODING,
                                         f"{self.manifest} {where}: not UTF-8"))
        continue
      raw_tags = row.get(self.tags_column)
      if isinstance(raw_tags, list):
        names = [normalize_tag(str(t)) for t in raw_tags]
      elif isinstance(raw_tags, str):
        names = parse_tag_string(raw_tags)
      elif raw_tags is None:
        names = []
      else:
        yield SourceItem(key=key, error=(BAD_METADATA, f"{self.manifest} {where}: "
                                         f"{self.tags_column!r} must be a string or a list"))
        continue
      post_id = None
      if self.id_column:
        try:
          post_id = check_id(row.get(self.id_column))
        except ValueError as e:
          yield SourceItem(key=key, error=(BAD_ID, f"{self.manifest} {where}: {e}"))
          continue
      rating = row.get(self.rating_column) if self.rating_column else None
      box = None
      if self.box_columns:
        try:
          box = boxes.parse_values([row.get(c) for c in self.box_columns], self.box_units)
        except ValueError as e:
          yield SourceItem(key=key, error=(BAD_BOX, f"{self.manifest} {where}: {e}"))
          continue
      yield SourceItem(key=key, id=post_id, path=os.path.join(self.image_root, key),
                       tags=[RawTag(n) for n in names if n], rating=rating or None, box=box,
                       box_units=self.box_units)
