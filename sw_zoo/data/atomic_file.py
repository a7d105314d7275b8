"""Atomic file replacement for the small metadata files of a dataset.

Readers treat `dataset.json` as "this dataset is complete", so a crash mid-write must leave
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import uuid


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` via a temp file in the same directory and os.replace."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  # The temp file must be on the same filesystem for os.replace to be atomic; the ".tmp" suffix
  # makes leftovers from a crash easy to recognise (and git-ignored).
  tmp_path = os.path.join(directory,
                          f"{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  # Mode 0o666 filtered by the umask, like an ordinary open(); mkstemp would make it 0600.
  fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
