"""K-fold copies of a dataset for cross-validated predictions.

`sw-zoo folds DATA --folds K` writes K datasets whose `validation` split is one fold of DATA's
`train` split and whose `train` split is the rest; a model trained on fold k's dataset predicts
its validation split out of sample, and the K prediction sets together cover every image.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable

import grain.python as grain

from sw_zoo import run_dir
from sw_zoo.data.atomic_file import check_output_dir
from sw_zoo.data.dataset_info import (SELECTED_TAGS_FILENAME, read_dataset_info, selected_tags_path, split_paths,
                                      write_dataset_info)
from sw_zoo.data.records import decode_record
from sw_zoo.data.shard_writer import ShardWriter


def fold_of(record_id: int, folds: int) -> int:
  """Deterministic fold of a record id (a hash, so folds do not follow shard or id order)."""
  digest = hashlib.blake2b(int(record_id).to_bytes(8, "little", signed=True), digest_size=8).digest()
  return int.from_bytes(digest, "little") % folds


def make_folds(data_dir: str, out_dir: str, *, folds: int, split: str = "train", shard_size: int = 2000,
               progress: Callable[[int], None] | None = None, force: bool = False) -> list[str]:
  """Writes `out_dir/fold-<k>` for k < folds: `validation` = fold k of `split`, `train` = the rest.

  A finished fold (its dataset.json present and made from the same source) is kept, so an
  interrupted run resumes; shards are written as temp files and renamed (ShardWriter).
  """
  if folds < 2:
    raise ValueError(f"--folds must be at least 2, got {folds}")
  data_dir = run_dir.absolute(data_dir)
  info = read_dataset_info(data_dir)
  # Only fold-<k> datasets are written (and an interrupted run's are resumed): a folder holding
  # anything else is refused (atomic_file.check_output_dir).
  check_output_dir(out_dir, is_own=lambda p: all(e.startswith("fold-") for e in os.listdir(p)),
                   what="cross-validation folds", force=force, protect=[data_dir])
  if split not in info["splits"]:
    raise KeyError(f"{data_dir}: no split {split!r}; it has {sorted(info['splits'])}")
  source = grain.ArrayRecordDataSource(split_paths(data_dir, split, info))
  made = []
  for k in range(folds):
    fold_dir = os.path.join(out_dir, f"fold-{k}")
    generator = {"name": "sw_zoo.curation.folds", "source": data_dir, "split": split, "folds": folds,
                 "fold": k}
    try:
      if read_dataset_info(fold_dir).get("generator") == generator:
        made.append(fold_dir)
        if progress:
          progress(len(source))
        continue
    except (FileNotFoundError, ValueError, KeyError):
      pass
    os.makedirs(fold_dir, exist_ok=True)
    with (ShardWriter(fold_dir, "train", shard_size) as train,
          ShardWriter(fold_dir, "validation", shard_size) as held):
      counts = {"train": 0, "validation": 0}
      for i in range(len(source)):
        raw = source[i]
        held_out = fold_of(decode_record(raw)["id"], folds) == k
        (held if held_out else train).write(raw)
        counts["validation" if held_out else "train"] += 1
        if progress:
          progress(1)
    shutil.copyfile(selected_tags_path(data_dir),
                    os.path.join(fold_dir, SELECTED_TAGS_FILENAME))
    write_dataset_info(fold_dir, {
        "schema_version": info["schema_version"], "source": f"fold {k} of {folds} of {data_dir} ({split})",
        "image_size": info["image_size"], "num_labels": info["num_labels"],
        "splits": {"train": {"num_examples": counts["train"], "shards": train.filenames,
                             "shard_examples": train.shard_examples},
                   "validation": {"num_examples": counts["validation"], "shards": held.filenames,
                                  "shard_examples": held.shard_examples}},
        "generator": generator})
    made.append(fold_dir)
  return made
