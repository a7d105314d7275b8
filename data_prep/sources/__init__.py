"""Where images and tags come from. Every source yields `SourceItem`s lazily, in a deterministic
order, and can be iterated more than once (data_prep.convert scans once for the vocabulary and
split sizes, then iterates again to write shards).

    folder     a tree of images with sidecar caption files (img.png + img.txt)
    manifest   a CSV or JSON-lines file: path, tags[, rating][, id]
    danbooru   Danbooru20xx JSON-lines post metadata + 512px/<bucket>/<id>.jpg images
    sqlite     the fire-eggs Danbooru SQLite database SW-CV-ModelZoo trained from
    e621       the e621 database export: posts CSV + tags CSV, images by md5
    tfds       a prepared tensorflow_datasets directory (array_record format)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Protocol, Sequence

from data_prep.tags import RawTag
from sw_zoo.data.image_files import IMAGE_EXTENSIONS

# Reasons an item is rejected while a source is read (no image is opened for these).
BAD_METADATA = "bad_metadata"            # unparsable manifest row / JSON line, missing fields
BAD_CAPTION_ENCODING = "bad_caption_encoding"  # caption or manifest text is not UTF-8
NO_CAPTION = "no_caption"                # image without a sidecar tag file
NOT_IMAGE = "not_image"                  # post is a video / archive (file_ext)
DELETED = "deleted"                      # the site removed the post (e621's is_deleted), usually its file too
BAD_ID = "bad_id"                        # id not an int in [0, 2**31)
BAD_BOX = "bad_box"                      # box values unparsable or outside the image (data_prep.boxes)

MAX_ID = 2**31 - 1  # Records carry ids the pipeline stores as int32.


@dataclasses.dataclass
class SourceItem:
  """One post / image.

  key: stable unique name (relative image path, or "split/index"); stored as the record's
    `source` and hashed for the split of sources without ids.
  id: the post id, or None (the converter then numbers items in source order).
  tags: raw tags; rating: raw rating ('g', 'safe', 'rating:e', ...) or None.
  path / image: the image file, or its encoded bytes.
  split: a split fixed by the source itself (tfds), else None.
  error: (reason, detail) when the item is already known to be unusable.
  unknown_tags: tag references the source could not resolve (e.g. a tag_id with no tags row).
  sidecar: the caption file the tags were read from (folder sources), so that editing it counts
    as a change of the inputs (`data_prep.inputs`).
  box: one object's box (x0, y0, x1, y1) as the source gives it, in `box_units` ("normalised" or
    "pixels", see `data_prep.boxes`), or None; made into the record's normalised box when the
    image is converted.
  """
  key: str
  id: int | None = None
  tags: Sequence[RawTag] = ()
  rating: Any = None
  path: str | None = None
  image: bytes | None = None
  split: str | None = None
  error: tuple[str, str] | None = None
  unknown_tags: Sequence[str] = ()
  sidecar: str | None = None
  box: tuple[float, float, float, float] | None = None
  box_units: str = "normalised"


class Source(Protocol):
  kind: str
  # "id": split by id % 1000; "key": by a stable hash of `key`; "source": items carry a split.
  split_by: str

  def describe(self) -> dict[str, Any]:
    """JSON-able description (paths, options) recorded in dataset.json."""

  def __iter__(self) -> Iterator[SourceItem]:
    ...


def check_id(value: Any) -> int:
  """A post id as an int in [0, 2**31); ValueError otherwise."""
  if isinstance(value, bool):
    raise ValueError(f"id must be an integer, got {value!r}")
  if isinstance(value, str):
    value = value.strip()
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise ValueError(f"id must be an integer, got {value!r}") from None
  if isinstance(value, float) and value != number:
    raise ValueError(f"id must be an integer, got {value!r}")
  if not 0 <= number <= MAX_ID:
    raise ValueError(f"id {number} is outside [0, {MAX_ID}]")
  return number


def danbooru_bucket(post_id: int) -> str:
  """Danbooru20xx image folder of a post: the id modulo 1000, four digits."""
  return f"{post_id % 1000:04d}"


def format_image_path(template: str, *, post_id: int, md5: str | None = None,
                      ext: str | None = None) -> str:
  """Expands {id}, {bucket}, {md5}, {ext} in an image path template."""
  return template.format(id=post_id, bucket=danbooru_bucket(post_id), md5=md5 or "",
                         ext=(ext or "").lstrip("."))


def is_non_image_ext(ext: str | None) -> bool:
  return bool(ext) and f".{str(ext).lower().lstrip('.')}" not in IMAGE_EXTENSIONS
