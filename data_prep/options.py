"""`PrepareOptions`: everything besides the source that decides the bytes a conversion writes
(see `python -m data_prep --help`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from data_prep.tags import (DEFAULT_CATEGORIES, RATING_TAGS, TagMapper, load_aliases, load_blacklist,
                            load_tag_table)
from sw_zoo.data.image_io import IMAGE_FORMATS
from sw_zoo.data.vocab import CATEGORY_NAMES


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything besides the source that decides the output bytes (see `python -m data_prep`)."""
  max_side: int | None = 512
  image_format: str = "jpeg"
  quality: int = 95
  passthrough_jpeg: bool = False
  shard_size: int = 1000
  val_permille: int = 50
  holdout_permille: int = 0
  categories: tuple[int, ...] = DEFAULT_CATEGORIES  # () keeps every category.
  min_count: dict = dataclasses.field(default_factory=dict)  # {category or None: n}
  top_k: dict = dataclasses.field(default_factory=dict)
  blacklist: str | None = None
  aliases: str | None = None
  tag_categories: str | None = None
  keep_ratings: tuple[str, ...] = ()  # () keeps every post.
  rating_s_as: str = "sensitive"
  min_tags: int = 1

  def validate(self) -> None:
    """Raises ValueError for an option no conversion could honour (before any work is done)."""
    if self.max_side is not None and self.max_side < 1:
      raise ValueError(f"max_side must be positive (or None to keep sizes), got {self.max_side}")
    if self.image_format not in IMAGE_FORMATS:
      raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
    if not 1 <= self.quality <= 100:
      raise ValueError(f"quality must be in [1, 100], got {self.quality}")
    if self.shard_size < 1:
      raise ValueError(f"shard_size must be positive, got {self.shard_size}")
    if not (0 <= self.val_permille and 0 <= self.holdout_permille
            and self.val_permille + self.holdout_permille < 1000):
      raise ValueError(f"need val_permille, holdout_permille >= 0 with a sum below 1000, got "
                       f"{self.val_permille}, {self.holdout_permille}")
    for rating in self.keep_ratings:
      if rating not in RATING_TAGS:
        raise ValueError(f"keep_ratings: {rating!r} is not one of {RATING_TAGS}")
    if self.min_tags < 0:
      raise ValueError(f"min_tags must be non-negative, got {self.min_tags}")
    for path in (self.blacklist, self.aliases, self.tag_categories):
      if path is not None and not os.path.isfile(path):
        raise ValueError(f"{path} does not exist")

  def as_json(self) -> dict[str, Any]:
    """The options as recorded in dataset.json; tag files by path and content hash, so editing a
    file counts as other options."""
    def file_info(path):
      if path is None:
        return None
      with open(path, "rb") as f:
        return {"path": os.path.abspath(path), "sha256": hashlib.sha256(f.read()).hexdigest()}

    result = dataclasses.asdict(self)
    for key in ("min_count", "top_k"):
      result[key] = {CATEGORY_NAMES.get(k, str(k)) if k is not None else "*": v
                     for k, v in sorted(result[key].items(), key=lambda kv: str(kv[0]))}
    result["categories"] = [CATEGORY_NAMES.get(c, str(c)) for c in self.categories] or "all"
    for key in ("blacklist", "aliases", "tag_categories"):
      result[key] = file_info(result[key])
    result["keep_ratings"] = list(self.keep_ratings)
    return result

  def make_mapper(self) -> TagMapper:
    """The tag normaliser these options describe (aliases, blacklist, categories, ratings)."""
    return TagMapper(aliases=load_aliases(self.aliases) if self.aliases else None,
                     blacklist=load_blacklist(self.blacklist) if self.blacklist else (),
                     tag_table=load_tag_table(self.tag_categories) if self.tag_categories
                     else None,
                     categories=self.categories, rating_s_as=self.rating_s_as)
