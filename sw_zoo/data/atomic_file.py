"""Atomic replacement of files and directories, and the one rule for output directories.

Output rule (`check_output_dir`, applied by `replace_dir` and by every command that writes a
directory): a command writes into, or replaces, only a directory that does not exist, is empty,
or already holds the same kind of artefact it writes (a bundle's config.json, an index's
index.json, ...). Anything else is refused with a message naming the path and `--force`; and a
directory that contains the command's inputs, its run, the working directory or the home
directory is never replaced, even with `--force`.

Readers treat `dataset.json` as "this dataset is complete", so a crash mid-write must leave
either the old file or the new one, never half of one; bundles, predictions and search indexes
are whole directories, replaced the same way.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sw_zoo import storage


class OutputRefused(FileExistsError):
  """An output directory holds something this command did not make (or its own inputs)."""


def _contains(parent: str, child: str) -> bool:
  return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_output_dir(out_dir: str | os.PathLike, *, is_own: Callable[[str], bool], what: str, force: bool = False,
                     protect: Iterable[str | os.PathLike] = ()) -> None:
  """Raises OutputRefused unless `out_dir` may be written (see the module docstring).

  `is_own(path)` says whether an existing directory holds `what` (e.g. "a model bundle");
  `protect`: the command's inputs (source folders, the run's workdir), which `out_dir` must not
  be or contain. Nothing is written here (a gs:// `out_dir` is judged on its local mirror, made the
  bucket's state first)."""
  if storage.is_remote(out_dir):
    storage.check_bucket(os.fspath(out_dir))
    local = storage.pull(os.fspath(out_dir), exact=True)
    return check_output_dir(local, is_own=is_own, what=what, force=force,
                            protect=[storage.mirror_path(os.fspath(p)) for p in protect])
  out = os.path.realpath(os.path.expanduser(os.fspath(out_dir)))
  guarded = [(os.fspath(p), "an input of this command") for p in protect]
  guarded += [(os.getcwd(), "the working directory"), (os.path.expanduser("~"), "your home directory")]
  for path, role in guarded:
    if _contains(out, os.path.realpath(os.path.expanduser(path))):
      raise OutputRefused(f"--out {out_dir}: it holds {path} ({role}); refusing to write there, "
                          "choose another output directory")
  if not os.path.lexists(out):
    return
  if not os.path.isdir(out):
    raise OutputRefused(f"--out {out_dir}: exists and is not a directory; choose another output directory")
  if not os.listdir(out) or is_own(out) or force:
    return
  raise OutputRefused(f"--out {out_dir}: exists, is not empty and does not hold {what}; refusing to replace it "
                      "(choose another directory, or pass --force to replace it)")


def temp_path_beside(path: str | os.PathLike) -> str:
  """A fresh temp name next to `path`: on the same filesystem, so os.replace onto `path` is
  atomic; the ".tmp" suffix makes leftovers from a crash easy to recognise (and git-ignored), and
  keeps tools that list "*.onnx" / "*.csv" from picking up a half-written file."""
  path = os.fspath(path)
  return os.path.join(os.path.dirname(os.path.abspath(path)),
                      f"{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_synced(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to a new file and fsyncs it (inside a temp directory that is renamed later)."""
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` via a temp file beside it (`temp_path_beside`) and os.replace: a
  crash leaves the old file or the new one, never half of one."""
  path = os.fspath(path)
  tmp_path = temp_path_beside(path)
  # Mode 0o666 filtered by the umask, like an ordinary open(); mkstemp would make it 0600.
  fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8, line ends as given) as `atomic_write_bytes` does."""
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
  """A CSV file (header + rows, '\n' line ends) written as `atomic_write_text` does."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  atomic_write_text(path, buffer.getvalue())


def replace_dir(out_dir: str, fill: Callable[[str], None], *, is_own: Callable[[str], bool], what: str,
                force: bool = False, protect: Iterable[str | os.PathLike] = ()) -> str:
  """Creates `out_dir` atomically: `fill(tmp)` writes a sibling temp directory, which is then
  renamed into place. An existing `out_dir` is swapped out by two renames and removed, so a
  reader sees the old directory, none for an instant, or the new one, never a partial one; a
  crash inside `fill` leaves only a `.<name>.*.tmp` directory (removed on error). What may be
  replaced follows `check_output_dir` (checked before anything is written)."""
  check_output_dir(out_dir, is_own=is_own, what=what, force=force, protect=protect)
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
  try:
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; bundles and indexes are meant to be shared
    fill(tmp)
    if os.path.lexists(out_dir):
      old = f"{out_dir}.{uuid.uuid4().hex[:8]}.old.tmp"
      os.rename(out_dir, old)
      os.rename(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir
