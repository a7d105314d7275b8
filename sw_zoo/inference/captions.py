"""Caption files as kohya's tag_images_by_wd14_tagger.py and the WD-tagger tools write them: one
`<image stem>.txt` beside each image holding the tags joined by ", ".

The choices those tools offer are `CaptionStyle` fields: character tags first, tags always put
first when present, undesired tags dropped, underscores shown as spaces (except in kaomoji,
where the underscore is the mouth), the rating tag first or last. Captions are written
atomically (temp file + os.replace): a crash leaves the old caption or the new one.

Before anything is written, `check_caption_targets` refuses a run that would lose data: a caption
extension that names an image (a.png overwritten with text) or is not a plain suffix, two images
that map to one caption (a.png + a.jpg -> a.txt, the second silently replacing the first), and
folders that cannot be written (every image would fail one by one). In append mode a caption that
is not UTF-8 is left untouched and reported, never rewritten with replacement characters.
"""
from __future__ import annotations

import dataclasses
import os

import time
from typing import TYPE_CHECKING, Any

from sw_zoo import progress
from sw_zoo.data.atomic_file import atomic_write_text
from sw_zoo.data.image_files import IMAGE_EXTENSIONS

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


class CaptionNotUTF8(ValueError):
  """Append mode met an existing caption that is not UTF-8: extending it would garble it."""


def normalize_extension(extension: str) -> str:
  """The caption extension with its leading dot ('txt' -> '.txt'); ValueError for one that is empty,
  contains a path separator, or ends in an image extension (the caption would overwrite an image,
  or be taken for one by the next run)."""
  ext = extension.strip()
  if ext and not ext.startswith("."):
    ext = "." + ext  # kohya scripts take '.txt'; 'txt' would have written 'atxt'
  seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
  if len(ext) < 2 or set(ext) <= {"."} or any(c in ext for c in seps) or "\0" in ext:
    raise ValueError(f"--caption_extension {extension!r}: expected a file suffix such as .txt or .caption")
  if os.path.splitext("caption" + ext)[1].lower() in IMAGE_EXTENSIONS:
    raise ValueError(f"--caption_extension {extension!r} is an image extension: captions would overwrite "
                     "the images (or be read as images); use .txt or .caption")
  return ext


def caption_path(image_path: str, extension: str = ".txt") -> str:
  return os.path.splitext(image_path)[0] + extension


def caption_collisions(files: list[str], extension: str = ".txt") -> list[tuple[str, list[str]]]:
  """(caption path, images) for every caption path that more than one image maps to, in file order."""
  by_caption: dict[str, list[str]] = {}
  for path in files:
    by_caption.setdefault(caption_path(path, extension), []).append(path)
  return [(cap, images) for cap, images in by_caption.items() if len(images) > 1]


def check_caption_targets(files: list[str], extension: str = ".txt", *, show: int = 5) -> str:
  """Checks, before anything is written, that captions for `files` can be written without losing
  data; returns the normalised extension. ValueError for a bad extension or for two images sharing
  one caption path (listing the first `show`), PermissionError for a folder that is not writable."""
  extension = normalize_extension(extension)
  collisions = caption_collisions(files, extension)
  if collisions:
    # The colliding images share a folder and a stem, so their names alone say which they are.
    listed = "; ".join(f"{cap} <- {', '.join(os.path.basename(i) for i in images)}"
                       for cap, images in collisions[:show])
    more = f" (and {len(collisions) - show} more)" if len(collisions) > show else ""
    raise ValueError(f"{len(collisions)} caption files would each be written by several images, the last "
                     f"one silently replacing the others: {listed}{more}; rename the images or tag the "
                     "folders separately")
  # os.access, not a trial write: the check must not touch the folder. It sees read-only mounts
  # and permissions (not a full disk: writes that still fail are reported per image).
  for folder in sorted({os.path.dirname(os.path.abspath(caption_path(p, extension))) for p in files}):
    if not os.access(folder, os.W_OK):
      raise PermissionError(f"{folder}: folder is not writable, so no caption could be written there; "
                            "fix its permissions or copy the images somewhere writable")
  return extension


def write_caption(image_path: str, tags: list[str], style: CaptionStyle, *, extension: str = ".txt",
                  append: bool = False) -> str:
  """Writes (or, with `append`, extends) the caption of `image_path`; returns its path.
  CaptionNotUTF8 (file untouched) when appending to a caption that is not UTF-8."""
  path = caption_path(image_path, extension)
  if append and os.path.exists(path):
    with open(path, "rb") as f:
      raw = f.read()
    try:
      existing = raw.decode("utf-8-sig")  # a BOM (Notepad) is not part of the first tag
    except UnicodeDecodeError as e:
      # Decoding with errors='replace' and writing back would turn every non-ASCII tag into U+FFFD.
      raise CaptionNotUTF8(f"{path} is not UTF-8 ({e}); left untouched, convert it to UTF-8 to append") from e
    tags = merge_caption(existing, tags, style.separator)
  atomic_write_text(path, style.separator.join(tags) + "\n")
  return path


def tag_files(tagger: Any, files: list[str], style: CaptionStyle, *, thresholds: Any = None,
              mcut: bool = False, extension: str = ".txt", append: bool = False,
              show_progress: bool = True) -> dict[str, Any]:
  """Captions `files` with `tagger`; returns {'tagged': n, 'skipped': [(path, message)], 'seconds': s}.
  Unreadable images, captions that cannot be written and (in append mode) existing captions that
  are not UTF-8 are listed, never fatal. Targets that would lose data fail first
  (`check_caption_targets`), before any image is decoded or caption written."""
  extension = check_caption_targets(files, extension)
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
        except OSError as e:  # a full disk, a caption path that is a folder: report and go on
          skipped.append((result.source, f"cannot write caption: {e}"))
        except CaptionNotUTF8 as e:
          skipped.append((result.source, str(e)))
      bar.update(1)
  return {"tagged": tagged, "skipped": skipped, "seconds": time.perf_counter() - start}
