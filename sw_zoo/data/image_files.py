"""Which files are images: the extensions every folder reader uses (`sw-zoo prepare folder`,
`sw-zoo tag`, `sw-zoo index`) and the one folder walk they share."""
from __future__ import annotations

import os
from collections.abc import Iterator

# Lower case, with the dot. A file with one of these that does not decode is reported as
# unreadable by whoever reads it, never silently dropped.
IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".jfif", ".png", ".gif", ".webp", ".bmp",
                              ".tif", ".tiff", ".avif"))


def is_image_name(name: str) -> bool:
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_files(root: str, *, recursive: bool = True, exclude: str | None = None) -> Iterator[str]:
  """Every file under `root` in a stable order (folders walked sorted, files sorted within a
  folder); hidden files and folders, and the folder `exclude` (e.g. an output directory inside
  the tree), are skipped."""
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                         and os.path.join(dirpath, d) != exclude) if recursive else []
    for name in sorted(filenames):
      if not name.startswith("."):
        yield os.path.join(dirpath, name)


def iter_images(root: str, *, recursive: bool = True, exclude: str | None = None) -> Iterator[str]:
  """The image files among `iter_files`, in the same order."""
  return (path for path in iter_files(root, recursive=recursive, exclude=exclude)
          if is_image_name(os.path.basename(path)))
