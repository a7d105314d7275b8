"""The sha256 of a file, read in 1 MiB blocks (bundle params, remapped shards, `prepare
--fingerprint hash`): one implementation, so every checksum in the project means the same."""
from __future__ import annotations

import hashlib

_BLOCK = 1 << 20


def sha256_file(path: str) -> str:
  """Hex sha256 of the file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_BLOCK), b""):
      digest.update(block)
  return digest.hexdigest()
