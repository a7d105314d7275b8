"""Datasets on gs:// (or any fsspec URL): each process stages only the shards it reads.

The ArrayRecord reader under grain opens local files only (measured: a gs:// path neither opens
nor fails within 20 s), so a remote dataset is read from the local mirror (`sw_zoo.storage`).
Processes read contiguous blocks of a split (`pipeline.process_slice`), and dataset.json's
`shard_examples` says which shards hold a block, so on a pod each host downloads about
1/process_count of the data, verified by size and checksum, once: later runs reuse it.

The mirror is bounded: before staging, shards of other datasets are evicted, least recently used
first, until this host's shards fit under `SW_ZOO_CACHE_MAX_GB` (default: what the cache's disk
can hold, less 10%); when they cannot fit, the error says how much is needed and the ways out
(more hosts, a bigger disk, or a bucket mounted with gcsfuse and `data.dir` pointing at it).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any

from sw_zoo import storage
from sw_zoo.data.shard_writer import SHARD_SUFFIX
from sw_zoo.progress import bar

_USED_MARK = ".last_used"  # one per staged dataset: its mtime orders eviction


def block_shards(split_info: dict[str, Any], start: int, stop: int) -> tuple[list[int], int]:
  """(indices of the shards holding examples [start, stop), global index of the first one's first
  example). Without `shard_examples` (datasets from before it) every shard, from 0."""
  counts = split_info.get("shard_examples")
  shards = split_info["shards"]
  if counts is None:
    return list(range(len(shards))), 0
  chosen, offset, first = [], 0, None
  for index, count in enumerate(counts):
    if offset < stop and offset + count > start:
      chosen.append(index)
      first = offset if first is None else first
    offset += count
  return chosen, (first if first is not None else 0)


def limit_bytes() -> int | None:
  text = os.environ.get("SW_ZOO_CACHE_MAX_GB", "").strip()
  if not text:
    return None
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"SW_ZOO_CACHE_MAX_GB={text!r} is not a number of gigabytes") from None
  if value <= 0:
    raise ValueError(f"SW_ZOO_CACHE_MAX_GB={text!r} must be > 0")
  return int(value * 1e9)


def _staged_datasets(root: str) -> list[str]:
  """Mirror directories that hold a dataset (marked by a staging run), oldest use first."""
  found = []
  for directory, _, names in os.walk(root):
    if _USED_MARK in names:
      found.append((os.path.getmtime(os.path.join(directory, _USED_MARK)), directory))
  return [d for _, d in sorted(found)]


def _shard_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory) if n.endswith(SHARD_SUFFIX))


def _make_room(url: str, local_dir: str, needed: int, limit: int | None) -> None:
  """Evicts other datasets' shards (LRU) so `needed` more bytes fit; raises when they cannot."""
  root = storage.mirror_root()
  os.makedirs(root, exist_ok=True)
  free = shutil.disk_usage(root).free
  staged = [d for d in _staged_datasets(root) if d != local_dir]
  held = sum(_shard_bytes(d) for d in staged)
  bound = limit if limit is not None else int(0.9 * (free + held))
  for directory in staged:
    if held + needed <= bound and needed <= free * 0.95:
      break
    size = _shard_bytes(directory)
    for name in os.listdir(directory):
      if name.endswith(SHARD_SUFFIX) or name.endswith(SHARD_SUFFIX + storage.SIDECAR_SUFFIX):
        os.remove(os.path.join(directory, name))
    held -= size
    free += size
  if held + needed > bound or needed > free:
    raise OSError(
        f"{url}: this process needs {needed / 1e9:.1f} GB of shards but the cache at {root} can take "
        f"{max(0, min(bound - held, free)) / 1e9:.1f} GB (SW_ZOO_CACHE_MAX_GB / free disk). Use more hosts "
        "(each stages 1/hosts of the data), a bigger disk or SW_ZOO_CACHE, or mount the bucket (gcsfuse) "
        "and set data.dir to the mount")


def stage_shards(url: str, names: list[str], listing: dict[str, dict[str, Any]]) -> str:
  """Local directory holding the verified copies of the shards `names` of the dataset at `url`."""
  missing = [n for n in names if n not in listing]
  if missing:
    raise FileNotFoundError(f"{storage.join(url, missing[0])}: listed in dataset.json but not in the bucket")
  local_dir = storage.mirror_path(url)
  wanted = {n: listing[n] for n in names}
  needed = sum(int(info.get("size") or 0) for n, info in wanted.items()
               if not os.path.isfile(os.path.join(local_dir, *n.split("/"))))
  _make_room(url, local_dir, needed, limit_bytes())
  total = sum(int(info.get("size") or 0) for info in wanted.values())
  with bar(total, f"staging {len(names)} shards of {url}", unit="B", unit_scale=True,
           enabled=needed >= (64 << 20)) as progress:
    storage.pull(url, only=wanted.__contains__, listing=wanted, progress=progress.update)
  os.makedirs(local_dir, exist_ok=True)
  with open(os.path.join(local_dir, _USED_MARK), "w") as f:
    f.write(f"{time.time()}\n")
  return local_dir
