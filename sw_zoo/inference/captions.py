"""Caption files as kohya's tag_images_by_wd14_tagger.py and the WD-tagger tools write them: one
`<image stem>.txt` beside each image holding the tags joined by ", ".

The choices those tools offer are `CaptionStyle` fields: character tags first, tags always put
first when present, undesired tags dropped, underscores shown as spaces (except in kaomoji,
where the underscore is the mouth), the rating tag first or last. Captions are written
atomically (temp file + os.replace): a crash leaves the old caption or the new one.
"""
from __future__ import annotations

import dataclasses
import os

import time
from typing import TYPE_CHECKING, Any

from sw_zoo import progress
from sw_zoo.data.atomic_file import atomic_write_text

if TYPE_CHECKING:  # only for annotations: captions do not need jax
  from sw_zoo.inference.tagger import Prediction

# Danbooru tags that are emoticons: `^_^` with a space would no longer be the face. The list the
# WD-tagger tools keep as-is when they turn underscores into spaces.
KAOMOJIS = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
    "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})

RATING_POSITIONS = ("none", "first", "last")


def display_name(tag: str, remove_underscore: bool) -> str:
  return tag if not remove_underscore or tag in KAOMOJIS else tag.replace("_", " ")


def tag_key(text: str) -> str:
  """Matching key: users may write a tag with spaces or underscores ('long hair' = long_hair)."""
  return text.strip().replace(" ", "_")


def parse_tag_list(text: str | None) -> tuple[str, ...]:
  """'1girl, solo,  ' -> ('1girl', 'solo')."""
  return tuple(t.strip() for t in (text or "").split(",") if t.strip())


@dataclasses.dataclass(frozen=True)
class CaptionStyle:
  separator: str = ", "
  remove_underscore: bool = False
  undesired: tuple[str, ...] = ()  # never written (either spelling)
  always_first: tuple[str, ...] = ()  # moved to the front, in this order, when predicted
  character_first: bool = False  # character tags before general ones (default: after)
  rating: str = "none"  # where the most likely rating tag goes: none | first | last

  def __post_init__(self):
    if self.rating not in RATING_POSITIONS:
      raise ValueError(f"rating position {self.rating!r}: expected one of {RATING_POSITIONS}")


def caption_tags(prediction: Prediction, style: CaptionStyle) -> list[str]:
  """The tags of one caption, in order, as they will be written."""
  groups = [prediction.character, prediction.general] if style.character_first else [prediction.general, prediction.character]
  groups += list(prediction.other.values())
  undesired = {tag_key(t) for t in style.undesired}
  ordered = list(dict.fromkeys(name for group in groups for name, _ in group if tag_key(name) not in undesired))
  present = set(ordered)
  first = [tag_key(t) for t in style.always_first if tag_key(t) in present]
  ordered = list(dict.fromkeys(first + ordered))
  rating = prediction.rating_tag
  if style.rating != "none" and rating is not None and tag_key(rating) not in undesired and rating not in present:
    ordered = [rating, *ordered] if style.rating == "first" else [*ordered, rating]
  return [display_name(t, style.remove_underscore) for t in ordered]


def split_caption(text: str, separator: str) -> list[str]:
  """An existing caption's tags ('a, b,c' with separator ', '; whitespace with separator ' ')."""
  return [t.strip() for t in text.split(separator.strip() or None) if t.strip()]


def merge_caption(existing: str, tags: list[str], separator: str) -> list[str]:
  """Append mode: the existing tags, then the new ones not already there (either spelling)."""
  old = split_caption(existing, separator)
  seen = {tag_key(t) for t in old}
  return old + [t for t in tags if tag_key(t) not in seen]


def caption_path(image_path: str, extension: str = ".txt") -> str:
  return os.path.splitext(image_path)[0] + extension


def write_caption(image_path: str, tags: list[str], style: CaptionStyle, *, extension: str = ".txt",
                  append: bool = False) -> str:
  """Writes (or, with `append`, extends) the caption of `image_path`; returns its path."""
  path = caption_path(image_path, extension)
  if append and os.path.exists(path):
    with open(path, encoding="utf-8", errors="replace") as f:
      tags = merge_caption(f.read(), tags, style.separator)
  atomic_write_text(path, style.separator.join(tags) + "\n")
  return path


def tag_files(tagger: Any, files: list[str], style: CaptionStyle, *, thresholds: Any = None,
              mcut: bool = False, extension: str = ".txt", append: bool = False,
              show_progress: bool = True) -> dict[str, Any]:
  """Captions `files` with `tagger`; returns {'tagged': n, 'skipped': [(path, message)], 'seconds': s}.
  Unreadable images and captions that cannot be written are listed, never fatal."""
  skipped: list[tuple[str, str]] = []
  tagged = 0
  start = time.perf_counter()
  with progress.bar(len(files), unit="img", enabled=show_progress) as bar:
    for result in tagger.iter_predict(files, thresholds=thresholds, mcut=mcut, skip_errors=True):
      if result.error is not None:
        skipped.append((result.source, str(result.error)))
      else:
        try:
          write_caption(result.source, caption_tags(result.prediction, style), style, extension=extension,
                        append=append)
          tagged += 1
        except OSError as e:  # a read-only folder, a full disk: report and go on
          skipped.append((result.source, f"cannot write caption: {e}"))
      bar.update(1)
  return {"tagged": tagged, "skipped": skipped, "seconds": time.perf_counter() - start}
