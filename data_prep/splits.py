"""Which split each source item goes to, or why it is left out. Both passes of a conversion
resolve items here, so they agree on every item's split and position.

Sources with post ids use the id's last three digits, `bucket = id % 1000`, as SW-CV-ModelZoo did
for Danbooru2021 (its train = buckets 0000-0899, 0900-0969 held out, validation = 0970-0999, i.e.
`val_permille=30, holdout_permille=70`). Folders and manifests without ids use
`bucket = sha1(relative path) % 1000`. Then bucket >= 1000 - val_permille is validation, the
`holdout_permille` buckets below that are left out, the rest is train. Sources with their own
splits (tfds) keep them.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Iterator, NamedTuple

from data_prep.options import PrepareOptions
from data_prep.sources import DELETED, NOT_IMAGE, Source, SourceItem
from data_prep.tags import TagMapper, TagStats

HELD_OUT = "held_out"              # bucket in the hold-out range
RATING_FILTERED = "rating_filtered"  # rating not in keep_ratings
# Items left out by design, counted without listing them; every other reason is bad input. (A
# full e621 export holds millions of deleted posts: listing each would bloat report.json.)
EXCLUSION_REASONS = (HELD_OUT, RATING_FILTERED, NOT_IMAGE, DELETED)


def _key_bucket(key: str) -> int:
  return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8],
                        "big") % 1000


def split_of_bucket(bucket: int, val_permille: int, holdout_permille: int) -> str | None:
  """The split of a bucket in [0, 1000): "validation", "train", or None (held out)."""
  if bucket >= 1000 - val_permille:
    return "validation"
  if bucket >= 1000 - val_permille - holdout_permille:
    return None
  return "train"


class Resolved(NamedTuple):
  """One source item as both passes see it."""
  item: SourceItem
  item_id: int
  split: str | None
  reason: str | None  # Why the item is not positioned (error or exclusion), else None.
  detail: str
  tags: list  # [(name, category, tag_id)]
  rating: str | None


def resolve_items(source: Source, mapper: TagMapper, options: PrepareOptions,
                  stats: TagStats | None, unknown_ratings: collections.Counter | None
                  ) -> Iterator[Resolved]:
  """Every source item with its mapped tags and rating and its split, or the reason it is left
  out. Tag statistics are gathered into `stats` / `unknown_ratings` when given (the scan)."""
  carve_validation = source.split_by == "source" and not getattr(source, "has_validation", True)
  for counter, item in enumerate(source):
    item_id = item.id if item.id is not None else counter
    if item.error is not None:
      yield Resolved(item, item_id, None, item.error[0], item.error[1], [], None)
      continue
    tags, caption_rating = mapper.map(item.tags, stats)
    if stats is not None:
      for name in item.unknown_tags:
        stats.unknown[name] += 1
    rating = mapper.rating(item.rating) if item.rating is not None else None
    if item.rating is not None and rating is None and unknown_ratings is not None:
      unknown_ratings[str(item.rating)] += 1
    rating = rating or caption_rating
    if options.keep_ratings and rating not in options.keep_ratings:
      yield Resolved(item, item_id, None, RATING_FILTERED, f"rating {rating}", [], rating)
      continue
    if source.split_by == "source" and not (carve_validation and item.split == "train"):
      split = item.split
    else:
      bucket = item_id % 1000 if source.split_by in ("id", "source") else _key_bucket(item.key)
      split = split_of_bucket(bucket, options.val_permille, options.holdout_permille)
    if split is None:
      yield Resolved(item, item_id, None, HELD_OUT, "", [], rating)
      continue
    yield Resolved(item, item_id, split, None, "", tags, rating)
