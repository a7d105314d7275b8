"""The fire-eggs Danbooru SQLite database (github.com/fire-eggs/Danbooru2021, `make_db.py`), the
label source SW-CV-ModelZoo's training used.

Expected schema (every table / column name can be changed with a `SqliteSchema` field, i.e. a
command-line flag, since hand-made variants of this database exist):

    images(image_id INT PRIMARY KEY, rating TEXT, md5 TEXT, file_ext TEXT, ...)
    tags(tag_id INT PRIMARY KEY, name TEXT, category INT, count INT)
    imageTags(image_id INT, tag_id INT, PRIMARY KEY(image_id, tag_id))

Only `images.image_id`, `imageTags.(image_id, tag_id)` and `tags.(tag_id, name)` are required;
`rating`, `md5`, `file_ext` and `category` are read when present (a missing optional column, or
one set to "", reads as NULL). `count` is not used: counts are recomputed on the training split.
The images are found through a path template ({id}, {bucket}, {md5}, {ext}), by default the
Danbooru2021 `512px/{bucket}/{id}.jpg`, relative to `image_root`. `where` is an optional SQL
condition on the images table (alias `i`), e.g. `i.is_deleted = 0 AND i.rating IN ('g','s')`.
Images are read in image_id order; each one's tags come from one indexed sub-query, so memory
stays flat however large the database is. The database is opened read-only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import sqlite3
from typing import Any, Iterator

from data_prep.sources import (BAD_ID, NOT_IMAGE, SourceItem, check_id, format_image_path,
                               is_non_image_ext)
from data_prep.sources.danbooru import DEFAULT_TEMPLATE
from data_prep.tags import RawTag

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class SqliteSchema:
  images_table: str = "images"
  image_id_column: str = "image_id"
  rating_column: str = "rating"
  md5_column: str = "md5"
  ext_column: str = "file_ext"
  tags_table: str = "tags"
  tag_id_column: str = "tag_id"
  tag_name_column: str = "name"
  tag_category_column: str = "category"
  image_tags_table: str = "imageTags"
  image_tags_image_column: str = "image_id"
  image_tags_tag_column: str = "tag_id"

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value and not _IDENTIFIER.match(value):
        raise ValueError(f"SQLite schema {field.name}={value!r} is not a plain SQL identifier")


_OPTIONAL = ("rating_column", "md5_column", "ext_column", "tag_category_column")


def _int_or_none(text: str) -> int | None:
  try:
    return int(float(text))
  except ValueError:
    return None


class SqliteSource:
  kind = "sqlite"
  split_by = "id"

  def __init__(self, database: str | os.PathLike, *, image_root: str | os.PathLike,
               image_template: str = DEFAULT_TEMPLATE, schema: SqliteSchema = SqliteSchema(),
               where: str | None = None):
    self.database = os.path.abspath(os.fspath(database))
    if not os.path.isfile(self.database):
      raise ValueError(f"SQLite database {self.database} does not exist")
    self.image_root = os.path.abspath(os.fspath(image_root))
    self.image_template = image_template
    format_image_path(image_template, post_id=1, md5="0", ext="jpg")
    self.where = where or None
    self.schema = self._check_schema(schema)

  def _connect(self) -> sqlite3.Connection:
    return sqlite3.connect(pathlib.Path(self.database).as_uri() + "?mode=ro", uri=True)

  def _check_schema(self, schema: SqliteSchema) -> SqliteSchema:
    """Fails naming the missing table/column; disables absent optional columns."""
    with self._connect() as db:
      def columns(table):
        found = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
        if not found:
          raise ValueError(f"{self.database}: no table {table!r} (tables: "
                           f"{sorted(r[0] for r in db.execute('SELECT name FROM sqlite_master'))})")
        return found

      tables = {"images_table": columns(schema.images_table),
                "tags_table": columns(schema.tags_table),
                "image_tags_table": columns(schema.image_tags_table)}
    owner = {"image_id_column": "images_table", "rating_column": "images_table",
             "md5_column": "images_table", "ext_column": "images_table",
             "tag_id_column": "tags_table", "tag_name_column": "tags_table",
             "tag_category_column": "tags_table", "image_tags_image_column": "image_tags_table",
             "image_tags_tag_column": "image_tags_table"}
    changes = {}
    for field, table_field in owner.items():
      column = getattr(schema, field)
      if not column or column in tables[table_field]:
        continue
      table = getattr(schema, table_field)
      if field in _OPTIONAL:
        log.warning("%s: table %s has no column %r; reading it as NULL", self.database, table,
                    column)
        changes[field] = ""
      else:
        raise ValueError(f"{self.database}: table {table!r} has no column {column!r} "
                         f"(columns: {sorted(tables[table_field])}); set the column name with "
                         f"--{field.replace('_', '-')}")
    return dataclasses.replace(schema, **changes)

  def describe(self) -> dict[str, Any]:
    return {"database": self.database, "image_root": self.image_root,
            "image_template": self.image_template, "where": self.where,
            "schema": dataclasses.asdict(self.schema)}

  def _query(self) -> str:
    s = self.schema

    def col(name):
      return f'i."{name}"' if name else "NULL"

    category = f'coalesce(t."{s.tag_category_column}", \'\')' if s.tag_category_column else "''"
    tags = (f'(SELECT group_concat(it."{s.image_tags_tag_column}" || char(31) || {category} '
            f'|| char(31) || coalesce(t."{s.tag_name_column}", char(0)), char(30)) '
            f'FROM "{s.image_tags_table}" it LEFT JOIN "{s.tags_table}" t '
            f'ON t."{s.tag_id_column}" = it."{s.image_tags_tag_column}" '
            f'WHERE it."{s.image_tags_image_column}" = i."{s.image_id_column}")')
    where = f"WHERE ({self.where})" if self.where else ""
    return (f'SELECT i."{s.image_id_column}", {col(s.rating_column)}, {col(s.md5_column)}, '
            f'{col(s.ext_column)}, {tags} FROM "{s.images_table}" i {where} '
            f'ORDER BY i."{s.image_id_column}"')

  def __iter__(self) -> Iterator[SourceItem]:
    db = self._connect()
    try:
      for raw_id, rating, md5, ext, tag_blob in db.execute(self._query()):
        try:
          post_id = check_id(raw_id)
        except ValueError as e:
          yield SourceItem(key=f"image_id={raw_id}", error=(BAD_ID, f"{self.database}: {e}"))
          continue
        key = format_image_path(self.image_template, post_id=post_id, md5=md5, ext=ext)
        if is_non_image_ext(ext):
          yield SourceItem(key=key, id=post_id,
                           error=(NOT_IMAGE, f"image {post_id} is a .{ext} file"))
          continue
        tags, unknown = [], []
        for entry in sorted((tag_blob or "").split("\x1e")):
          if not entry:
            continue
          tag_id, category, name = entry.split("\x1f", 2)
          if name == "\x00":
            unknown.append(f"tag_id:{tag_id}")
            continue
          tags.append(RawTag(name, _int_or_none(category), _int_or_none(tag_id)))
        yield SourceItem(key=key, id=post_id, tags=tags, rating=rating, unknown_tags=unknown,
                         path=os.path.join(self.image_root, key))
    finally:
      db.close()
