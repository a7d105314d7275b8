"""Writes record bytes into ArrayRecord shards of a fixed number of records.

Shards are named `<split>-00000-of-00004.array_record`. The total is only known at the end (a
converter may skip unreadable images), so each shard is first written to
`<split>-00000.array_record.tmp` and all are renamed to their final names in `close()`. An
interrupted run therefore leaves only `.tmp` files, never a shard that looks complete.

A converter that writes a split as independent, resumable pieces (data_prep.convert) knows the
total up front and passes `first_index` and `num_shards`, so one writer can produce exactly
`train-00003-of-00010.array_record`.
"""

from __future__ import annotations

import os

from array_record.python import array_record_module

# group_size:1 makes every record its own chunk, so random access (grain's global shuffle) reads
# exactly one record. Images are already compressed; a second compression would only cost CPU.
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"
SHARD_SUFFIX = ".array_record"


def shard_filename(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


class ShardWriter:
  """Context manager: `write(record_bytes)` many times, get the shard file names on close.

      with ShardWriter(out_dir, "train", shard_size=2000) as writer:
        for raw in records:
          writer.write(raw)
      writer.filenames  # ["train-00000-of-00005.array_record", ...], relative to out_dir

  On an exception inside the `with` block the partial `.tmp` files are removed.

  `first_index` numbers this writer's first shard (default 0) and `num_shards` fixes the "-of-N"
  total (default: however many shards this writer ends up writing).
  """

  def __init__(self, out_dir: str | os.PathLike, split: str, shard_size: int,
               options: str = ARRAY_RECORD_OPTIONS, *, first_index: int = 0,
               num_shards: int | None = None):
    if shard_size <= 0:
      raise ValueError(f"shard_size must be positive, got {shard_size}")
    if not split or "/" in split or "-" in split:
      raise ValueError(f"split name must be non-empty without '/' or '-', got {split!r}")
    if first_index < 0 or (num_shards is not None and not 0 <= first_index < num_shards):
      raise ValueError(f"need 0 <= first_index < num_shards, got {first_index}, {num_shards}")
    self.out_dir = os.fspath(out_dir)
    self.split = split
    self.shard_size = shard_size
    self.options = options
    self.first_index = first_index
    self.num_shards = num_shards
    self.num_records = 0
    self.filenames: list[str] = []
    self._tmp_paths: list[str] = []
    self._writer = None
    self._closed = False
    os.makedirs(self.out_dir, exist_ok=True)

  def _open_next_shard(self) -> None:
    tmp_path = os.path.join(
        self.out_dir,
        f"{self.split}-{self.first_index + len(self._tmp_paths):05d}{SHARD_SUFFIX}.tmp")
    self._tmp_paths.append(tmp_path)
    self._writer = array_record_module.ArrayRecordWriter(tmp_path, self.options)

  def write(self, record: bytes) -> None:
    if self._closed:
      raise ValueError(f"ShardWriter for split {self.split!r} is already closed")
    if self._writer is None:
      if (self.num_shards is not None
          and self.first_index + len(self._tmp_paths) >= self.num_shards):
        raise ValueError(f"ShardWriter for split {self.split!r} would write more than "
                         f"num_shards={self.num_shards} shards")
      self._open_next_shard()
    self._writer.write(record)
    self.num_records += 1
    if self.num_records % self.shard_size == 0:
      self._writer.close()
      self._writer = None

  @property
  def shard_examples(self) -> list[int]:
    """Records per shard file, in order (dataset.json's `shard_examples`): every shard but the
    last is full."""
    full, rest = divmod(self.num_records, self.shard_size)
    return [self.shard_size] * full + ([rest] if rest else [])

  def close(self) -> list[str]:
    """Finishes the last shard and renames all shards to their final names."""
    if self._closed:
      return self.filenames
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    num_shards = len(self._tmp_paths) if self.num_shards is None else self.num_shards
    for i, tmp_path in enumerate(self._tmp_paths):
      name = shard_filename(self.split, self.first_index + i, num_shards)
      os.replace(tmp_path, os.path.join(self.out_dir, name))
      self.filenames.append(name)
    self._closed = True
    return self.filenames

  def abort(self) -> None:
    """Drops everything written so far."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    for tmp_path in self._tmp_paths:
      if os.path.exists(tmp_path):
        os.remove(tmp_path)
    self._closed = True

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()
