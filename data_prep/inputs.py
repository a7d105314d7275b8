"""The content fingerprint of a conversion's inputs: one (key hash, value hash) pair per item.

Pass 1 (the scan) feeds every source item here, rejected ones included, so that fixing a broken
image, editing a caption or adding / removing a file changes the fingerprint of the run; without
it a rerun would see the same arguments and silently keep the stale dataset.

    key hash    64 bits of blake2b(item.key)
    value hash  64 bits of blake2b over: the image file's size + mtime_ns (or, with
                fingerprint="hash", the sha256 of its bytes), the same for the sidecar caption
                file (its absence counts too), inline image bytes, the tags as the source gives
                them (normalised names, before aliases / blacklist, which are options and
                fingerprinted as such), the raw rating, the reason a source already rejected
                the item, and its box as the source gives it (only for items with a box, so
                the fingerprints of box-less inputs are what they were before boxes existed)

Only 16 bytes per item are kept (two `array('Q')`), so millions of posts cost tens of MB. The
sorted pairs are stored as `<out>/input_manifest.npy`, so that a rerun can say how many items were
added, modified or removed since the dataset was made.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from typing import NamedTuple

import numpy as np

from data_prep.sources import SourceItem
from data_prep.tags import normalize_tag
from sw_zoo.data.file_hash import sha256_file

INPUT_MANIFEST_FILENAME = "input_manifest.npy"
FINGERPRINT_MODES = ("stat", "hash")


def _hash64(data: bytes) -> int:
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _file_sha256(path: str) -> bytes:
  return bytes.fromhex(sha256_file(path))


class InputHasher:
  """Collects the (key, value) hash pair of every item of one scan."""

  def __init__(self, mode: str = "stat"):
    if mode not in FINGERPRINT_MODES:
      raise ValueError(f"fingerprint must be one of {FINGERPRINT_MODES}, got {mode!r}")
    self.mode = mode
    self._keys = array("Q")
    self._values = array("Q")

  def _file_part(self, path: str | None) -> bytes:
    if path is None:
      return b"-"
    try:
      if self.mode == "hash":
        return b"h" + _file_sha256(path)
      st = os.stat(path)
      return f"s{st.st_size}:{st.st_mtime_ns}".encode()
    except OSError as e:
      # A missing or unreadable file is a state of its own; fixing it changes the hash.
      return f"e{e.errno}".encode()

  def add(self, item: SourceItem) -> None:
    """Records one source item (any item, usable or not)."""
    h = hashlib.blake2b(digest_size=8)
    for part in (self._file_part(item.path), self._file_part(item.sidecar)):
      h.update(len(part).to_bytes(4, "little") + part)
    h.update(b"i" + (hashlib.sha256(item.image).digest() if item.image is not None else b"-"))
    tags = sorted((normalize_tag(str(t.name)), t.category, t.tag_id) for t in item.tags)
    h.update(repr((tags, item.rating, item.error[0] if item.error else None)).encode())
    if item.box is not None:  # A box edited in a manifest or box file is a changed input.
      h.update(repr(("box", tuple(float(v) for v in item.box), item.box_units)).encode())
    self._keys.append(_hash64(item.key.encode("utf-8", "surrogateescape")))
    self._values.append(int.from_bytes(h.digest(), "little"))

  def pairs(self) -> np.ndarray:
    """The pairs as an (n, 2) uint64 array sorted by key, then value (the order of the source
    does not matter, its content does)."""
    pairs = np.empty((len(self._keys), 2), np.uint64)
    pairs[:, 0] = np.frombuffer(self._keys, np.uint64) if len(self._keys) else []
    pairs[:, 1] = np.frombuffer(self._values, np.uint64) if len(self._values) else []
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def digest(pairs: np.ndarray) -> str:
  """sha256 of the sorted pairs, recorded in the fingerprint."""
  return hashlib.sha256(np.ascontiguousarray(pairs, dtype="<u8").tobytes()).hexdigest()


def save(out_dir: str, pairs: np.ndarray) -> None:
  """Writes `<out_dir>/input_manifest.npy` atomically (no pickle)."""
  path = os.path.join(out_dir, INPUT_MANIFEST_FILENAME)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    np.save(f, np.ascontiguousarray(pairs, dtype="<u8"), allow_pickle=False)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load(out_dir: str) -> np.ndarray | None:
  """The stored pairs, or None when absent or unreadable (an older dataset)."""
  try:
    pairs = np.load(os.path.join(out_dir, INPUT_MANIFEST_FILENAME), allow_pickle=False)
  except (OSError, ValueError):
    return None
  return pairs if pairs.ndim == 2 and pairs.shape[1] == 2 else None


class Changes(NamedTuple):
  added: int
  modified: int
  removed: int


def compare(old: np.ndarray, new: np.ndarray) -> Changes:
  """How many items were added, modified (same key, other value) or removed from old to new."""
  old_keys, new_keys = old[:, 0], new[:, 0]
  in_old = np.isin(new_keys, old_keys)
  added = int(np.count_nonzero(~in_old))
  removed = int(np.count_nonzero(~np.isin(old_keys, new_keys)))
  pair = np.dtype([("k", "<u8"), ("v", "<u8")])

  def as_pairs(a: np.ndarray) -> np.ndarray:  # One comparable element per (key, value) row.
    return np.ascontiguousarray(a, dtype="<u8").view(pair).reshape(-1)

  modified = int(np.count_nonzero(~np.isin(as_pairs(new[in_old]), as_pairs(old))))
  return Changes(added, modified, removed)
