"""`dataset.json`: the description of a sharded dataset directory.

    {
      "schema_version": 1,                 # record schema of the shards (records.SCHEMA_VERSION)
      "source": "synthetic",               # where the data came from, free text
      "image_size": 128,                   # side of the stored square images, or null if mixed
      "num_labels": 64,                    # rows of selected_tags.csv
      "splits": {"train": {"num_examples": 10000,
                           "shards": ["train-00000-of-00005.array_record", ...],
                           "shard_examples": [2000, ...],    # optional: records per shard
                           "num_boxes": 9876}, ...},         # optional: records with a box
      "created": "2025-01-01T00:00:00+00:00",
      "generator": {...}                   # the arguments that produced the data
    }

Writers write this file last: its presence marks the directory as complete. `num_boxes` counts
the split's records that carry the optional `box` (records.py); absent means none do (datasets
written before boxes existed, the default synthetic set), see `num_boxes`.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from sw_zoo import storage
from sw_zoo.data import remote_dataset
from sw_zoo.data.atomic_file import atomic_write_text
from sw_zoo.data.records import SCHEMA_VERSION
from sw_zoo.data.vocab import read_selected_tags

DATASET_INFO_FILENAME = "dataset.json"
SELECTED_TAGS_FILENAME = "selected_tags.csv"

_REQUIRED_KEYS = ("schema_version", "source", "image_size", "num_labels", "splits")


def _fail(path: str, key: str, problem: str):
  raise ValueError(f"{path}: key {key!r} {problem}")


def validate_dataset_info(info: Any, path: str, data_dir: str | None = None) -> None:
  """Checks `info` against the format above; with `data_dir`, also that every shard exists.

  Raises ValueError naming the file and key at fault.
  """
  if not isinstance(info, dict):
    raise ValueError(f"{path}: top level must be a JSON object")
  for key in _REQUIRED_KEYS:
    if key not in info:
      _fail(path, key, "is missing")
  if info["schema_version"] != SCHEMA_VERSION:
    _fail(path, "schema_version",
          f"is {info['schema_version']!r}; this sw_zoo reads version {SCHEMA_VERSION}")
  size = info["image_size"]
  if size is not None and (not isinstance(size, int) or size <= 0):
    _fail(path, "image_size", f"must be a positive int or null, got {size!r}")
  if not isinstance(info["num_labels"], int) or info["num_labels"] <= 0:
    _fail(path, "num_labels", f"must be a positive int, got {info['num_labels']!r}")
  splits = info["splits"]
  if not isinstance(splits, dict) or not splits:
    _fail(path, "splits", "must be a non-empty object of split name -> split")
  for name, split in splits.items():
    key = f"splits.{name}"
    if not isinstance(split, dict):
      _fail(path, key, "must be an object")
    num = split.get("num_examples")
    if not isinstance(num, int) or num < 0:
      _fail(path, f"{key}.num_examples", f"must be a non-negative int, got {num!r}")
    shards = split.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
      _fail(path, f"{key}.shards", "must be a list of file names")
    if num > 0 and not shards:
      _fail(path, f"{key}.shards", f"is empty but num_examples is {num}")
    counts = split.get("shard_examples")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(shards)
                               or not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != num):
      _fail(path, f"{key}.shard_examples", f"must list one non-negative count per shard, summing to {num}")
    boxes = split.get("num_boxes", 0)
    if isinstance(boxes, bool) or not isinstance(boxes, int) or not 0 <= boxes <= num:
      _fail(path, f"{key}.num_boxes", f"must be an int in [0, num_examples={num}], got {boxes!r}")
    for shard in shards:
      if os.path.isabs(shard) or ".." in shard.split("/"):
        _fail(path, f"{key}.shards", f"must hold paths relative to the dataset dir, got {shard!r}")
      if data_dir is not None and not os.path.isfile(os.path.join(data_dir, shard)):
        _fail(path, f"{key}.shards",
              f"lists {shard!r} but {os.path.join(data_dir, shard)} does not exist")


def num_boxes(info: dict[str, Any], split: str) -> int:
  """How many records of `split` carry a box (0 for datasets that do not say)."""
  return int(info["splits"][split].get("num_boxes", 0))


def read_dataset_info(data_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads and validates `<data_dir>/dataset.json` (shards must exist). `data_dir` may be a
  gs:// URL: its metadata is mirrored locally and the shards are checked in the bucket's listing."""
  data_dir = os.fspath(data_dir)
  if storage.is_remote(data_dir):
    return _read_remote(data_dir)
  return _read_local(data_dir, data_dir)


def _read_local(data_dir: str, shown: str, check_shards: bool = True) -> dict[str, Any]:
  """Reads `data_dir`'s metadata; messages name `shown` (the URL for a mirrored dataset)."""
  path, shown_path = os.path.join(data_dir, DATASET_INFO_FILENAME), storage.join(shown, DATASET_INFO_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{shown_path} does not exist: {shown} is not a complete sw_zoo dataset "
                            "(dataset.json is written last, so a run may have been interrupted)")
  with open(path, encoding="utf-8") as f:
    try:
      info = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{shown_path}: not valid JSON: {e}") from e
  validate_dataset_info(info, shown_path, data_dir if check_shards else None)
  tags_path, shown_tags = os.path.join(data_dir, SELECTED_TAGS_FILENAME), storage.join(shown, SELECTED_TAGS_FILENAME)
  if not os.path.isfile(tags_path):
    raise FileNotFoundError(f"{shown_tags} does not exist but {shown_path} refers to it")
  num_tags = len(read_selected_tags(tags_path))
  if num_tags != info["num_labels"]:
    _fail(shown_path, "num_labels", f"is {info['num_labels']} but {shown_tags} has {num_tags} tags")
  return info


def _read_remote(url: str) -> dict[str, Any]:
  storage.check_bucket(url)
  listing = storage.remote_files(url)
  info_url = storage.join(url, DATASET_INFO_FILENAME)
  if DATASET_INFO_FILENAME not in listing:
    raise FileNotFoundError(f"{info_url} does not exist: {url} is not a complete sw_zoo dataset "
                            "(dataset.json is written last, so a run may have been interrupted)")
  wanted = {n: listing[n] for n in (DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME) if n in listing}
  local = storage.pull(url, only=wanted.__contains__, listing=wanted)
  info = _read_local(local, url, check_shards=False)
  for name, split in info["splits"].items():
    for shard in split["shards"]:
      if shard not in listing:
        _fail(info_url, f"splits.{name}.shards", f"lists {shard!r} but {storage.join(url, shard)} does not exist")
  return info


def selected_tags_path(data_dir: str) -> str:
  """A local path of the dataset's selected_tags.csv (for gs://, its verified mirror copy)."""
  if not storage.is_remote(data_dir):
    return os.path.join(data_dir, SELECTED_TAGS_FILENAME)
  return storage.pull(storage.join(data_dir, SELECTED_TAGS_FILENAME))


def write_dataset_info(data_dir: str | os.PathLike, info: dict[str, Any]) -> dict[str, Any]:
  """Validates and atomically writes `<data_dir>/dataset.json`; returns what was written.

  Fills in `created` (UTC ISO time) when absent. Call it after every shard is in place.
  """
  data_dir = os.fspath(data_dir)
  path = os.path.join(data_dir, DATASET_INFO_FILENAME)
  info = dict(info)
  info.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"))
  info.setdefault("generator", {})
  validate_dataset_info(info, path, data_dir)
  atomic_write_text(path, json.dumps(info, indent=2, sort_keys=False) + "\n")
  return info


def split_paths(data_dir: str | os.PathLike, split: str,
                info: dict[str, Any] | None = None, shards: list[int] | None = None) -> list[str]:
  """Local paths of the shards of `split` (or of its shards at indices `shards`), in record order.
  For a gs:// dataset they are staged into the local mirror first (`remote_dataset`)."""
  data_dir = os.fspath(data_dir)
  if not storage.is_remote(data_dir):
    data_dir = os.path.abspath(data_dir)
  info = read_dataset_info(data_dir) if info is None else info
  if split not in info["splits"]:
    raise KeyError(f"{storage.join(data_dir, DATASET_INFO_FILENAME)} has no split {split!r}; "
                   f"it has {sorted(info['splits'])}")
  names = info["splits"][split]["shards"]
  names = names if shards is None else [names[i] for i in shards]
  if storage.is_remote(data_dir):
    data_dir = remote_dataset.stage_shards(data_dir, names, storage.remote_files(data_dir))
  return [os.path.join(data_dir, shard) for shard in names]
