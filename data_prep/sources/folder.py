"""A folder tree of images with sidecar tag files, as kohya / booru downloaders write them.

    root/a/img001.png    root/a/img001.txt      "1girl, long hair, rating:s"
    root/b/post.jpg      root/b/post.jpg.txt    "1girl long_hair solo"   (gallery-dl style)

The caption is `<stem><ext>` or else `<name><ext>` (ext `.txt` by default). Files are visited in
sorted order (directories too, hidden ones skipped, symlinked directories not followed), so the
order and the item numbering are the same on every run and machine.

With `box_ext` (e.g. `.box`), a box file found beside the image the same way
(`img001.box` or `post.jpg.box`) gives one object's box, in `box_units`; its format is in
data_prep.boxes. An image without one has no box; a bad one skips the image as `bad_box`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from data_prep import boxes
from data_prep.sources import BAD_BOX, BAD_CAPTION_ENCODING, NO_CAPTION, SourceItem
from sw_zoo.data.image_files import is_image_name, iter_files, iter_images
from data_prep.tags import RawTag, parse_tag_string


class FolderSource:
  kind = "folder"
  split_by = "key"

  def __init__(self, root: str | os.PathLike, *, caption_ext: str = ".txt",
               exclude: str | os.PathLike | None = None, box_ext: str | None = None,
               box_units: str = "normalised"):
    self.root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(self.root):
      raise ValueError(f"folder source {self.root} is not a directory")
    self.caption_ext = caption_ext if caption_ext.startswith(".") else f".{caption_ext}"
    self.box_ext = (box_ext if box_ext.startswith(".") else f".{box_ext}") if box_ext else None
    if self.box_ext == self.caption_ext:
      raise ValueError(f"box files and caption files cannot share the extension {box_ext!r}")
    self.box_units = boxes.check_units(box_units)
    # The output directory, when it lies inside the tree, must not be read as input.
    self.exclude = os.path.abspath(os.fspath(exclude)) if exclude else None

  def describe(self) -> dict[str, Any]:
    described = {"root": self.root, "caption_ext": self.caption_ext}
    if self.box_ext:  # Only then: datasets made before boxes keep their fingerprint.
      described.update(box_ext=self.box_ext, box_units=self.box_units)
    return described

  def _image_paths(self) -> Iterator[str]:
    yield from iter_images(self.root, exclude=self.exclude)

  def _caption_path(self, image_path: str, ext: str | None = None) -> str | None:
    """The sidecar with extension `ext` (default: the caption's) beside an image, or None."""
    ext = ext or self.caption_ext
    for candidate in (os.path.splitext(image_path)[0] + ext, image_path + ext):
      if os.path.isfile(candidate):
        return candidate
    return None

  def _box(self, image_path: str) -> tuple[float, float, float, float] | None:
    """The image's box from its box file (None without one); ValueError naming the file."""
    path = self._caption_path(image_path, self.box_ext)
    if path is None:
      return None
    with open(path, "rb") as f:
      raw = f.read()
    try:
      return boxes.parse_box_text(raw.decode("utf-8-sig"), self.box_units)
    except (UnicodeDecodeError, ValueError) as e:
      raise ValueError(f"{path}: {e}") from None

  def orphan_captions(self) -> list[dict[str, str]]:
    """Tag files no image claims ({"path", "hint"}), in walk order: their tags would be lost
    without a word. The usual cause is an image whose extension is mistyped or not supported
    (`post.jpe` beside `post.txt`); the hint names such a file when there is one."""
    claimed, captions, by_stem = set(), [], {}
    for path in iter_files(self.root, exclude=self.exclude):
      if is_image_name(os.path.basename(path)):
        claimed.update((os.path.splitext(path)[0] + self.caption_ext, path + self.caption_ext))
      elif path.endswith(self.caption_ext):
        captions.append(path)
      elif self.box_ext and path.endswith(self.box_ext):
        continue  # A sidecar, not a candidate for "the image you meant" in the hint below.
      else:
        by_stem.setdefault(os.path.splitext(path)[0], []).append(path)
    orphans = []
    for path in captions:
      if path in claimed:
        continue
      stem = path[:-len(self.caption_ext)]
      # `post.jpe` beside `post.txt` (same stem), or `post.jpe.txt` whose image is `post.jpe`.
      near = by_stem.get(stem, []) + [p for p in by_stem.get(os.path.splitext(stem)[0], []) if p == stem]
      if near:
        ext = os.path.splitext(near[0])[1] or "(no extension)"
        hint = f"{os.path.basename(near[0])} is beside it, but {ext} is not an image type sw_zoo reads"
      else:
        hint = "no file of that name is beside it (a renamed or deleted image?)"
      orphans.append({"path": path, "hint": hint})
    return orphans

  def __iter__(self) -> Iterator[SourceItem]:
    for path in self._image_paths():
      key = os.path.relpath(path, self.root).replace(os.sep, "/")
      # Non-UTF-8 file names arrive with surrogate escapes; keep the key printable and unique.
      key = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
      caption = self._caption_path(path)
      if caption is None:
        yield SourceItem(key=key, path=path,
                         error=(NO_CAPTION, f"no {self.caption_ext} tag file next to {path}"))
        continue
      with open(caption, "rb") as f:
        raw = f.read()
      try:
        text = raw.decode("utf-8-sig")
      except UnicodeDecodeError as e:
        yield SourceItem(key=key, path=path, sidecar=caption,
                         error=(BAD_CAPTION_ENCODING, f"{caption} is not UTF-8: {e}"))
        continue
      box = None
      if self.box_ext:
        try:
          box = self._box(path)
        except ValueError as e:
          yield SourceItem(key=key, path=path, sidecar=caption, error=(BAD_BOX, str(e)))
          continue
      yield SourceItem(key=key, path=path, sidecar=caption,
                       tags=[RawTag(t) for t in parse_tag_string(text)], box=box,
                       box_units=self.box_units)
