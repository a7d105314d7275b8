"""The e621 database export (e621.net/db_export): `posts-<date>.csv[.gz]` + `tags-<date>.csv[.gz]`.

Posts CSV columns read (the others, e.g. `description`, `source`, `fav_count`, are ignored):
`id`, `md5`, `file_ext`, `rating` (s/q/e), `tag_string` (space-separated) and `is_deleted`
(t/f). Tags CSV: `id`, `name`, `category`; `post_count` is not used, counts are recomputed on the
training split. Both files may be gzip-compressed (detected from their first bytes).

Categories: e621's codes are mapped onto sw_zoo's (Danbooru's) so that `general`, `artist`,
`copyright`, `character` and `meta` mean the same in every dataset. Only meta (7 -> 5) and species
(5 -> 10) move: e621's 5 is species but sw_zoo's 5 is meta, and species has no Danbooru
counterpart, so it keeps a category of its own, code 10 (free on both sites), instead of being
folded into general and lost. contributor (2), invalid (6) and lore (8) keep their e621 codes,
which sw_zoo does not use; an unknown future e621 code c becomes 100 + c so it never collides.
The names species / contributor / invalid / lore work in --categories, --min-count and --top-k
(`translate_category_spec`); numbers there are sw_zoo codes. `sw-zoo prepare e621` keeps species
by default (general,character,species,rating): it is the e621 counterpart of a core category.

Ratings: the raw s/q/e is passed on, as the danbooru source does, so it maps like Danbooru's:
q -> questionable, e -> explicit, and s -> sensitive unless --rating-s-as general. e621 has no
separate General rating: its Safe covers Danbooru's General and Sensitive, so `general` is
never set by default (its rating row stays, with count 0, so rating heads keep 4 outputs).

Images: `<image-root>/<md5[0:2]>/<md5[2:4]>/<md5>.<file_ext>` (e621's static layout) or
`<image-root>/<md5>.<file_ext>`, looked up per post in that order. Skipped with a reason and
listed in report.json: posts with no image in either place (`missing_file`, both paths in the
detail), bad rows (`bad_id`, `bad_metadata`). Excluded and only counted (a full export holds
millions): deleted posts (`deleted`) and webm / swf / mp4 posts (`not_image`, as in the danbooru
source). Tags missing from the tags CSV are counted as unknown
and dropped (e.g. a posts export newer than the tags export), never guessed to be
general.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import re
from typing import Any, Iterator

from data_prep.sources import (BAD_ID, BAD_METADATA, DELETED, NOT_IMAGE, SourceItem, check_id,
                               is_non_image_ext)
from data_prep.tags import RawTag
from sw_zoo.data.image_io import MISSING_FILE
from sw_zoo.data.vocab import CATEGORY_SPECIES

POST_COLUMNS = ("id", "md5", "file_ext", "rating", "tag_string", "is_deleted")
TAG_COLUMNS = ("id", "name", "category")

# e621 code -> sw_zoo code (see the module docstring for why species and meta move).
E621_CATEGORIES = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: CATEGORY_SPECIES, 6: 6, 7: 5, 8: 8}
# Category names accepted in the options of `prepare e621` (species is also sw_zoo.data.vocab's
# name for 10; the others exist only on e621).
EXTRA_CATEGORY_NAMES = {"species": CATEGORY_SPECIES, "contributor": 2, "invalid": 6, "lore": 8}

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_EXT = re.compile(r"^[0-9a-z]{1,8}$")  # Also keeps a bad value from escaping --image-root.
_TRUE = ("t", "true", "1")


def sw_category(e621_code: int) -> int:
  return E621_CATEGORIES.get(e621_code, 100 + e621_code)


def translate_category_spec(spec: str | None) -> str | None:
  """'general,species' -> 'general,10'; 'species=50,5' -> '10=50,5' (a bare number is a count or
  an sw_zoo code and is left alone), for `tags.parse_categories` / `parse_per_category`."""
  if spec is None:
    return None

  def one(part: str) -> str:
    name, eq, value = part.partition("=")
    code = EXTRA_CATEGORY_NAMES.get(name.strip().lower())
    return part if code is None else f"{code}{eq}{value}"

  return ",".join(one(p) for p in spec.split(","))


@contextlib.contextmanager
def _csv_rows(path: str, required: tuple[str, ...]):
  """-> (rows: iterator of (line number, row list), {column: index}); ValueError naming the file
  and the first missing column, or the line where the file stops being readable CSV / gzip."""
  # e621 descriptions can exceed the csv module's 128 KiB default field limit.
  csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
  with open(path, "rb") as raw:
    gzipped = raw.read(2) == b"\x1f\x8b"
  opener = gzip.open if gzipped else open
  # errors="replace": a stray byte in a description must not stop a multi-GB read.
  with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
    reader = csv.reader(f)
    try:
      header = [c.strip() for c in next(reader, [])]
    except (EOFError, OSError, csv.Error) as e:
      raise ValueError(f"{path}: cannot read the CSV header: {e}") from None
    for column in required:
      if column not in header:
        raise ValueError(f"{path}: no column {column!r} (header: {','.join(header)[:300]})")

    def rows():
      try:
        for row in reader:
          yield reader.line_num, row
      except (EOFError, OSError, csv.Error) as e:
        raise ValueError(f"{path}:{reader.line_num}: unreadable: {e}") from None

    yield rows(), {c: header.index(c) for c in header}


class E621Source:
  kind = "e621"
  split_by = "id"

  def __init__(self, posts: str | os.PathLike, *, tags: str | os.PathLike,
               image_root: str | os.PathLike):
    self.posts = os.path.abspath(os.fspath(posts))
    self.tags = os.path.abspath(os.fspath(tags))
    self.image_root = os.path.abspath(os.fspath(image_root))
    for what, path in (("posts CSV", self.posts), ("tags CSV", self.tags)):
      if not os.path.isfile(path):
        raise ValueError(f"e621 {what} {path} does not exist")
    if not os.path.isdir(self.image_root):
      raise ValueError(f"image root {self.image_root} is not a directory")
    with _csv_rows(self.posts, POST_COLUMNS):  # A wrong file fails now, before any output.
      pass
    # Read once, here (a bad row fails before any output), and kept for both passes.
    self.tag_table = self._read_tags()

  def describe(self) -> dict[str, Any]:
    # "metadata" is a key convert.input_paths protects from --out.
    return {"metadata": [self.posts, self.tags], "image_root": self.image_root}

  def _read_tags(self) -> dict[str, RawTag]:
    """name -> RawTag(name, sw_zoo category, e621 tag id): one shared object per tag, so posts
    cost no allocation per tag."""
    table = {}
    with _csv_rows(self.tags, TAG_COLUMNS) as (rows, col):
      width = max(col[c] for c in TAG_COLUMNS) + 1
      for line, row in rows:
        if len(row) < width:
          raise ValueError(f"{self.tags}:{line}: {len(row)} fields, fewer than the header")
        name, raw_id, raw_category = (row[col[c]] for c in ("name", "id", "category"))
        for column, value in (("id", raw_id), ("category", raw_category)):
          if not value.strip().isdigit():
            raise ValueError(f"{self.tags}:{line}: column {column!r} must be a non-negative "
                             f"integer, got {value!r}")
        if name:
          table[name] = RawTag(name, sw_category(int(raw_category)), int(raw_id))
    return table

  def _find_image(self, md5: str, ext: str) -> str | None:
    for rel in (f"{md5[:2]}/{md5[2:4]}/{md5}.{ext}", f"{md5}.{ext}"):
      if os.path.isfile(os.path.join(self.image_root, rel)):
        return rel
    return None

  def __iter__(self) -> Iterator[SourceItem]:
    table = self.tag_table
    name = os.path.basename(self.posts)
    with _csv_rows(self.posts, POST_COLUMNS) as (rows, col):
      width = max(col[c] for c in POST_COLUMNS) + 1
      for line, row in rows:
        where = f"{name}:{line}"
        if len(row) < width:
          yield SourceItem(key=where, error=(BAD_METADATA, f"{self.posts}:{line}: {len(row)} "
                                             "fields, fewer than the header"))
          continue
        try:
          post_id = check_id(row[col["id"]])
        except ValueError as e:
          yield SourceItem(key=where, error=(BAD_ID, f"{self.posts}:{line}: {e}"))
          continue
        md5, ext = row[col["md5"]].strip().lower(), row[col["file_ext"]].strip().lower()
        valid = _MD5.match(md5) and _EXT.match(ext)
        key = f"{md5[:2]}/{md5[2:4]}/{md5}.{ext}" if valid else where
        if row[col["is_deleted"]].strip().lower() in _TRUE:
          yield SourceItem(key=key, id=post_id, error=(DELETED, f"post {post_id} is deleted"))
          continue
        if not valid:
          yield SourceItem(key=key, id=post_id, error=(
              BAD_METADATA, f"{self.posts}:{line}: post {post_id} has md5 {md5!r} / file_ext "
                            f"{ext!r}; expected 32 hex digits / a file extension"))
          continue
        if is_non_image_ext(ext):
          yield SourceItem(key=key, id=post_id,
                           error=(NOT_IMAGE, f"post {post_id} is a .{ext} file"))
          continue
        rel = self._find_image(md5, ext)
        if rel is None:
          yield SourceItem(key=key, id=post_id, path=os.path.join(self.image_root, key), error=(
              MISSING_FILE, f"post {post_id}: no image at {key} or {md5}.{ext} under "
                            f"{self.image_root}"))
          continue
        tags, unknown = [], []
        for tag_name in row[col["tag_string"]].split():
          tag = table.get(tag_name)
          if tag is None:
            unknown.append(tag_name)
          else:
            tags.append(tag)
        yield SourceItem(key=rel, id=post_id, tags=tags, rating=row[col["rating"]].strip() or None,
                         unknown_tags=unknown, path=os.path.join(self.image_root, rel))
