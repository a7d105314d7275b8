"""Caption files as kohya's tag_images_by_wd14_tagger.py and the WD-tagger tools write them: one
`<image stem>.txt` beside each image holding the tags joined by ", ".

The choices those tools offer are `CaptionStyle` fields: character tags first, tags always put
first when present, undesired tags dropped, underscores shown as spaces (except in kaomoji,
where the underscore is the mouth), the rating tag first or last, kohya's tag replacements and
character expansion ('chara_(series)' -> 'chara, series'), and for prompts parentheses escaped
('\\(') and scores as weights ('(tag:0.95)'). Captions are written atomically (temp file +
os.replace): a crash leaves the old caption or the new one.

Before anything is written, `check_caption_targets` refuses a run that would lose data: a caption
extension that names an image (a.png overwritten with text) or is not a plain suffix, two images
that map to one caption (a.png + a.jpg -> a.txt, the second silently replacing the first), and
folders that cannot be written (every image would fail one by one). In append mode a caption that
is not UTF-8 is left untouched and reported, never rewritten with replacement characters.
"""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

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


def parse_tag_replacement(text: str | None) -> tuple[tuple[str, str], ...]:
  """kohya's --tag_replacement 'source1,target1;source2,target2' (a literal ',' or ';' inside a
  tag written '\\,' / '\\;') -> ((source1, target1), ...); ValueError naming a malformed pair."""
  if not text:
    return ()
  comma, semicolon = "\0c", "\0s"  # NUL never occurs in a tag, so these cannot clash
  escaped = text.replace("\\,", comma).replace("\\;", semicolon)
  pairs = []
  for item in escaped.split(";"):
    if not item.strip():
      continue
    parts = item.split(",")
    if len(parts) != 2 or not parts[0].strip():
      shown = item.replace(comma, "\\,").replace(semicolon, "\\;")
      raise ValueError(f"--tag_replacement {shown!r}: expected 'source,target' pairs separated by ';' "
                       "(write a literal comma or semicolon as \\, or \\;)")
    pairs.append(tuple(p.strip().replace(comma, ",").replace(semicolon, ";") for p in parts))
  return tuple(pairs)


def expand_character(name: str) -> list[str]:
  """kohya's --character_tag_expand: 'chara_(series)' -> ['chara', 'series'], the last parenthesis
  only ('chara_(costume)_(series)' -> ['chara_(costume)', 'series']); other names unchanged."""
  head, sep, tail = name.rpartition("(")
  if name in KAOMOJIS or not sep or not name.endswith(")") or not head.rstrip("_ "):
    return [name]
  return [head.rstrip("_ "), tail[:-1]]


def escape_parentheses(tag: str) -> str:
  """For prompts: '(' and ')' are emphasis in WebUI/ComfyUI prompt syntax, so a tag's own are
  written '\\(' and '\\)' ('ganyu_(genshin_impact)' stays one tag, unweighted)."""
  return tag.replace("(", "\\(").replace(")", "\\)")


@dataclasses.dataclass(frozen=True)
class CaptionStyle:
  separator: str = ", "
  remove_underscore: bool = False
  undesired: tuple[str, ...] = ()  # never written (either spelling)
  always_first: tuple[str, ...] = ()  # moved to the front, in this order, when predicted
  character_first: bool = False  # character tags before general ones (default: after)
  rating: str = "none"  # where the most likely rating tag goes: none | first | last
  replacements: tuple[tuple[str, str], ...] = ()  # (source, target): source written as target
  character_expand: bool = False  # 'chara_(series)' -> 'chara', 'series'
  escape: bool = False  # '(' -> '\\(' for prompt use
  weights: bool = False  # '(tag:0.95)': the score as a prompt weight

  def __post_init__(self):
    if self.rating not in RATING_POSITIONS:
      raise ValueError(f"rating position {self.rating!r}: expected one of {RATING_POSITIONS}")


def caption_entries(prediction: Prediction, style: CaptionStyle) -> list[tuple[str, float]]:
  """(tag as it will be written, score) of one caption, in order, before escaping and weights."""
  groups = [prediction.character, prediction.general] if style.character_first else [prediction.general, prediction.character]
  groups += list(prediction.other.values())
  undesired = {tag_key(t) for t in style.undesired}
  scores: dict[str, float] = {}
  for group in groups:
    for name, score in group:
      if tag_key(name) not in undesired:
        scores.setdefault(name, score)
  ordered = list(scores)
  first = [tag_key(t) for t in style.always_first if tag_key(t) in scores]
  ordered = list(dict.fromkeys(first + ordered))
  rating = prediction.rating_tag
  if style.rating != "none" and rating is not None and tag_key(rating) not in undesired and rating not in scores:
    scores[rating] = prediction.rating[rating]
    ordered = [rating, *ordered] if style.rating == "first" else [*ordered, rating]
  characters = {name for name, _ in prediction.character}
  entries = [(part, scores[name]) for name in ordered for part in shown_names(name, style, character=name in characters)]
  seen: set[str] = set()  # an expanded series may also be predicted on its own: write it once
  return [(t, s) for t, s in entries if not (tag_key(t) in seen or seen.add(tag_key(t)))]


def shown_names(name: str, style: CaptionStyle, *, character: bool = False) -> list[str]:
  """How one predicted tag is written: replaced (--tag_replacement), a character expanded into
  name and series (--character_tag_expand), underscores shown as spaces (--remove_underscore)."""
  replace = {tag_key(src): dst for src, dst in style.replacements}
  shown = replace.get(tag_key(name), name)
  parts = expand_character(shown) if style.character_expand and character else [shown]
  return [display_name(part, style.remove_underscore) for part in parts]


def render_tag(tag: str, score: float, style: CaptionStyle) -> str:
  shown = escape_parentheses(tag) if style.escape else tag
  return f"({shown}:{score:.2f})" if style.weights else shown


def caption_tags(prediction: Prediction, style: CaptionStyle) -> list[str]:
  """The tags of one caption, in order, as they will be written."""
  return [render_tag(t, s, style) for t, s in caption_entries(prediction, style)]


def split_caption(text: str, separator: str) -> list[str]:
  """An existing caption's tags ('a, b,c' with separator ', '; whitespace with separator ' '; one
  per line with separator '\\n', where a tag may hold spaces)."""
  if separator == "\n":
    return [t.strip() for t in text.splitlines() if t.strip()]
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


def caption_path(image_path: str, extension: str = ".txt", fmt: str = "txt") -> str:
  """`<stem><ext>` beside the image; hydrus sidecars keep the image's name (`img.jpg.txt`)."""
  return image_path + extension if fmt == "hydrus" else os.path.splitext(image_path)[0] + extension


def caption_collisions(files: list[str], extension: str = ".txt", fmt: str = "txt") -> list[tuple[str, list[str]]]:
  """(caption path, images) for every caption path that more than one image maps to, in file order."""
  by_caption: dict[str, list[str]] = {}
  for path in files:
    by_caption.setdefault(caption_path(path, extension, fmt), []).append(path)
  return [(cap, images) for cap, images in by_caption.items() if len(images) > 1]


def check_caption_targets(files: list[str], extension: str = ".txt", *, fmt: str = "txt", show: int = 5) -> str:
  """Checks, before anything is written, that captions for `files` can be written without losing
  data; returns the normalised extension. ValueError for a bad extension or for two images sharing
  one caption path (listing the first `show`), PermissionError for a folder that is not writable."""
  extension = normalize_extension(extension)
  collisions = caption_collisions(files, extension, fmt)
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
  for folder in sorted({os.path.dirname(os.path.abspath(caption_path(p, extension, fmt))) for p in files}):
    if not os.access(folder, os.W_OK):
      raise PermissionError(f"{folder}: folder is not writable, so no caption could be written there; "
                            "fix its permissions or copy the images somewhere writable")
  return extension


def write_caption(image_path: str, tags: list[str], style: CaptionStyle, *, extension: str = ".txt",
                  append: bool = False, fmt: str = "txt") -> str:
  """Writes (or, with `append`, extends) the caption of `image_path`; returns its path. A hydrus
  sidecar (fmt='hydrus') holds one tag per line. CaptionNotUTF8 (file untouched) when appending
  to a caption that is not UTF-8."""
  path = caption_path(image_path, extension, fmt)
  separator = "\n" if fmt == "hydrus" else style.separator
  if append and os.path.exists(path):
    with open(path, "rb") as f:
      raw = f.read()
    try:
      existing = raw.decode("utf-8-sig")  # a BOM (Notepad) is not part of the first tag
    except UnicodeDecodeError as e:
      # Decoding with errors='replace' and writing back would turn every non-ASCII tag into U+FFFD.
      raise CaptionNotUTF8(f"{path} is not UTF-8 ({e}); left untouched, convert it to UTF-8 to append") from e
    tags = merge_caption(existing, tags, separator)
  atomic_write_text(path, separator.join(tags) + "\n")
  return path
