"""The Danbooru20xx layout (gwern's Danbooru2021 and relatives).

    metadata/posts000000000000.json ...   JSON lines, one post each
    512px/0123/4560123.jpg                 image of post 4560123: 512px/<id % 1000 :04d>/<id>.jpg

Fields read: `id`, `rating` ('g'/'s'/'q'/'e'; pre-2022 dumps only 's'/'q'/'e'), `file_ext`,
`md5` and the tag strings `tag_string_general` (category 0), `tag_string_artist` (1),
`tag_string_copyright` (3), `tag_string_character` (4), `tag_string_meta` (5). Older dumps
(Danbooru2018-2020) with a `tags` list of {id, name, category} objects work too, and keep the
tag ids. Posts whose `file_ext` is not an image (mp4, zip, swf...) are excluded as `not_image`.
The image path template can name {id}, {bucket}, {md5} and {ext}, e.g.
`original/{bucket}/{id}.{ext}` for the full-size images.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator

from data_prep.sources import (BAD_ID, BAD_METADATA, NOT_IMAGE, SourceItem, check_id,
                               format_image_path, is_non_image_ext)
from data_prep.tags import RawTag

DEFAULT_TEMPLATE = "512px/{bucket}/{id}.jpg"
TAG_STRING_FIELDS = (("tag_string_general", 0), ("tag_string_artist", 1),
                     ("tag_string_copyright", 3), ("tag_string_character", 4),
                     ("tag_string_meta", 5))


def expand_metadata_paths(paths) -> list[str]:
  """Files as given; directories -> their *.json / *.jsonl files, sorted."""
  files = []
  for path in paths:
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
      found = sorted(p for ext in ("*.json", "*.jsonl", "*.ndjson")
                     for p in glob.glob(os.path.join(path, ext)))
      if not found:
        raise ValueError(f"{path} holds no *.json / *.jsonl metadata files")
      files += found
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise ValueError(f"metadata path {path} does not exist")
  return files


def post_tags(post: dict) -> list[RawTag]:
  if any(field in post for field, _ in TAG_STRING_FIELDS):
    return [RawTag(name, category) for field, category in TAG_STRING_FIELDS
            for name in str(post.get(field) or "").split()]
  return [RawTag(str(t["name"]), int(t["category"]), int(t["id"]) if "id" in t else None)
          for t in post.get("tags") or () if isinstance(t, dict) and "name" in t]


class DanbooruSource:
  kind = "danbooru"
  split_by = "id"

  def __init__(self, metadata, *, image_root: str | os.PathLike,
               image_template: str = DEFAULT_TEMPLATE):
    self.metadata = expand_metadata_paths([metadata] if isinstance(metadata, (str, os.PathLike))
                                          else metadata)
    self.image_root = os.path.abspath(os.fspath(image_root))
    self.image_template = image_template
    format_image_path(image_template, post_id=1, md5="0", ext="jpg")  # Fail early on typos.

  def describe(self) -> dict[str, Any]:
    return {"metadata": self.metadata, "image_root": self.image_root,
            "image_template": self.image_template}

  def __iter__(self) -> Iterator[SourceItem]:
    for path in self.metadata:
      name = os.path.basename(path)
      with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          where = f"{name}:{n}"
          try:
            post = json.loads(line.decode("utf-8"))
            if not isinstance(post, dict):
              raise ValueError("not a JSON object")
          except (UnicodeDecodeError, ValueError) as e:
            yield SourceItem(key=where, error=(BAD_METADATA, f"{path}:{n}: {e}"))
            continue
          try:
            post_id = check_id(post.get("id"))
          except ValueError as e:
            yield SourceItem(key=where, error=(BAD_ID, f"{path}:{n}: {e}"))
            continue
          ext, md5 = post.get("file_ext"), post.get("md5")
          key = format_image_path(self.image_template, post_id=post_id, md5=md5, ext=ext)
          if is_non_image_ext(ext):
            yield SourceItem(key=key, id=post_id,
                             error=(NOT_IMAGE, f"post {post_id} is a .{ext} file"))
            continue
          try:
            tags = post_tags(post)
          except (KeyError, TypeError, ValueError) as e:
            yield SourceItem(key=key, id=post_id,
                             error=(BAD_METADATA, f"{path}:{n}: bad tags: {e}"))
            continue
          yield SourceItem(key=key, id=post_id, tags=tags, rating=post.get("rating"),
                           path=os.path.join(self.image_root, key))
