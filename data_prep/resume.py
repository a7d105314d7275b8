"""Resuming and reusing conversions: the fingerprint of a run, and the per-shard progress records.

After each shard a small JSON file in `<out>/_prepare/` records it (file, size, skipped items,
label counts). A rerun with the same inputs and arguments (checked by a fingerprint of arguments,
vocabulary, split sizes and the content of every input, `data_prep.inputs`) skips recorded
shards; a rerun with other arguments or inputs starts over. `dataset.json` is written last; its
presence marks completion, and rerunning a completed conversion is a no-op, while a completed
one whose inputs or options changed is refused (saying what changed) unless overwritten.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import logging
import os
import shutil
from typing import Any

import numpy as np

from data_prep import inputs
from data_prep.options import PrepareOptions
from data_prep.report import REPORT_FILENAME, Written
from data_prep.sources import Source
from sw_zoo.data.atomic_file import atomic_write_text
from sw_zoo.data.file_hash import sha256_file
from sw_zoo.data.dataset_info import DATASET_INFO_FILENAME, read_dataset_info
from sw_zoo.data.shard_writer import SHARD_SUFFIX
from sw_zoo.data.vocab import Tag, TagVocab

log = logging.getLogger(__name__)

GENERATOR_NAME = "data_prep"
# Bump whenever the bytes written for the same inputs change, so old datasets are not reused.
GENERATOR_VERSION = 1
PROGRESS_DIR = "_prepare"


def _fingerprint(payload: Any) -> str:
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# The parts of "generator" that are arguments (as opposed to inputs), compared key by key to say
# which changed.
_ARGUMENT_KEYS = ("name", "version", "kind", "source", "options")


def generator_info(source: Source, options: PrepareOptions, plan_items: dict[str, int],
                   vocab: TagVocab, inputs_info: dict[str, Any]) -> dict[str, Any]:
  """dataset.json's "generator": what made the dataset, with the fingerprint a rerun compares.

  `inputs_info`: {"mode", "items", "digest"} of the inputs' content (`data_prep.inputs`)."""
  generator = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "kind": source.kind,
               "source": source.describe(), "options": options.as_json(), "inputs": inputs_info}
  generator["fingerprint"] = _fingerprint(
      {"generator": generator, "plan": plan_items,
       "vocab": [(t.name, t.category, t.tag_id) for t in vocab]})
  return generator


def _what_changed(out_dir: str, old: dict[str, Any], new: dict[str, Any],
                  pairs: np.ndarray) -> str:
  """Why a completed dataset made by `old` ("generator") is not what `new` would make."""
  parts = []
  old_inputs, new_inputs = old.get("inputs") or {}, new["inputs"]
  if old_inputs.get("digest") != new_inputs["digest"]:
    stored = inputs.load(out_dir)
    if old_inputs and old_inputs.get("mode") != new_inputs["mode"]:
      parts.append(f"its inputs were fingerprinted with --fingerprint {old_inputs.get('mode')}, "
                   f"this run uses {new_inputs['mode']}")
    elif stored is None:
      parts.append(f"inputs may have changed since (no {inputs.INPUT_MANIFEST_FILENAME} to "
                   "compare with)")
    else:
      c = inputs.compare(stored, pairs)
      parts.append(f"inputs changed since: {c.added} added / {c.modified} modified / "
                   f"{c.removed} removed")
  changed = [k for k in _ARGUMENT_KEYS if old.get(k) != new.get(k)]
  if "options" in changed:
    old_options = old.get("options") or {}
    changed.remove("options")
    changed += [f"--{k.replace('_', '-')}" for k in sorted(new["options"])
                if old_options.get(k) != new["options"][k]]
  if changed:
    parts.append("options changed since: " + ", ".join(changed))
  if not parts:  # Same arguments and inputs, yet another fingerprint (another vocabulary).
    parts.append("it was made from other inputs or options")
  return "; ".join(parts)


def completed_report(out_dir: str, generator: dict[str, Any], pairs: np.ndarray,
                     overwrite: bool) -> dict[str, Any] | None:
  """The report of a completed dataset with `generator`'s fingerprint in `out_dir` (nothing left
  to do; says so on stdout), else None. A completed dataset made differently is un-marked when
  `overwrite`, otherwise FileExistsError saying what changed (`pairs`: this run's inputs)."""
  info_path = os.path.join(out_dir, DATASET_INFO_FILENAME)
  if not os.path.exists(info_path):
    return None
  try:
    existing = read_dataset_info(out_dir)
    old = existing.get("generator", {})
    made = existing.get("created", "at an unknown time")
    same = old.get("fingerprint") == generator["fingerprint"]
    problem = None if same else f"a dataset made {made}; " + _what_changed(out_dir, old, generator,
                                                                          pairs)
  except (ValueError, FileNotFoundError) as e:
    same, problem = False, f"an invalid dataset ({e})"
  if same:
    # Printed, not only logged: a silent no-op reads as "it did nothing, is it broken?".
    print(f"{out_dir}: already complete (made {made}); nothing to do", flush=True)
    report_path = os.path.join(out_dir, REPORT_FILENAME)
    if os.path.isfile(report_path):
      with open(report_path, encoding="utf-8") as f:
        return json.load(f)
    return {"out_dir": out_dir, "written": {s: v["num_examples"]
                                            for s, v in existing["splits"].items()}}
  if not overwrite:
    raise FileExistsError(f"{out_dir} holds {problem}; pass --overwrite to rebuild it, or choose "
                          "another directory")
  os.remove(info_path)  # From here until the new dataset.json the directory is incomplete.
  return None


def start_run(out_dir: str, fingerprint: str) -> str:
  """Readies `<out_dir>/_prepare` for a run with `fingerprint`, keeping the records of an
  interrupted run with the same one; returns its path."""
  progress_dir = os.path.join(out_dir, PROGRESS_DIR)
  state_path = os.path.join(progress_dir, "state.json")
  if os.path.isfile(state_path):
    with open(state_path, encoding="utf-8") as f:
      state = json.load(f)
    if state.get("fingerprint") != fingerprint:
      log.warning("%s holds an interrupted conversion with other inputs or options; starting "
                  "over", out_dir)
      shutil.rmtree(progress_dir)
  os.makedirs(progress_dir, exist_ok=True)
  atomic_write_text(state_path, json.dumps({"fingerprint": fingerprint}) + "\n")
  for leftover in glob.glob(os.path.join(out_dir, f"*{SHARD_SUFFIX}.tmp")):
    os.remove(leftover)
  return progress_dir


def _progress_path(progress_dir: str, split: str, index: int) -> str:
  return os.path.join(progress_dir, f"{split}-{index:05d}.json")


def write_record(progress_dir: str, record: dict) -> None:
  """Records a finished shard (`record` names its "split" and "index")."""
  atomic_write_text(_progress_path(progress_dir, record["split"], record["index"]),
                    json.dumps(record) + "\n")


def read_record(progress_dir: str, out_dir: str, split: str, index: int) -> dict | None:
  """The record of a shard written by an earlier (or this) run, if its file is intact."""
  path = _progress_path(progress_dir, split, index)
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  shard = record.get("shard")
  if shard is not None:
    shard_path = os.path.join(out_dir, shard)
    if not os.path.isfile(shard_path) or os.path.getsize(shard_path) != record.get("bytes"):
      return None
    # A shard whose labels were remapped (data_prep.prune) counts only if the rename happened;
    # the size alone cannot tell, remapped indices often encode to as many bytes.
    if "remapped_sha256" in record and sha256_file(shard_path) != record["remapped_sha256"]:
      return None
  return record




def load_done(progress_dir: str, out_dir: str, plan_shards: dict[str, int]) -> set:
  """{(split, shard)} recorded complete with an intact file (records are read again later, one
  at a time, so memory does not grow with the number of shards)."""
  return {(split, index) for split, num_shards in plan_shards.items()
          for index in range(num_shards)
          if read_record(progress_dir, out_dir, split, index) is not None}


def collect(progress_dir: str, out_dir: str, plan_shards: dict[str, int],
            vocab: TagVocab) -> Written:
  """Assembles the splits, skipped items and training tag counts from the per-shard records, in
  order; RuntimeError if one is missing."""
  splits_info, skipped_items = {}, []
  label_counts = collections.Counter()
  for split, num_shards in plan_shards.items():
    shards, shard_examples, num_examples, num_boxes = [], [], 0, 0
    for index in range(num_shards):
      record = read_record(progress_dir, out_dir, split, index)
      if record is None:
        raise RuntimeError(f"shard {index} of split {split!r} is missing after the run")
      if record["shard"]:
        shards.append(record["shard"])
        shard_examples.append(record["num_records"])
      num_examples += record["num_records"]
      num_boxes += record.get("num_boxes", 0)  # (records of runs from before boxes: none)
      skipped_items += record["skipped"]
      if split == "train":
        label_counts.update({int(i): int(n) for i, n in record["label_counts"]})
    splits_info[split] = {"num_examples": num_examples, "shards": shards,
                          "shard_examples": shard_examples, "num_boxes": num_boxes}
  if splits_info.get("validation", {}).get("num_examples", 1) == 0:
    log.warning("the validation split is empty; raise --val-permille or add data")
  counted = TagVocab([Tag(name=t.name, category=t.category, count=label_counts.get(i, 0),
                          tag_id=t.tag_id) for i, t in enumerate(vocab)])
  return Written(splits_info, skipped_items, counted)


def finish(out_dir: str, progress_dir: str, splits_info: dict) -> None:
  """Once dataset.json is written: drops the progress records and any shard files of a replaced
  dataset (other shard counts), which would only confuse."""
  keep = {name for split in splits_info.values() for name in split["shards"]}
  for split in splits_info:
    for path in glob.glob(os.path.join(out_dir, f"{split}-*-of-*{SHARD_SUFFIX}")):
      if os.path.basename(path) not in keep:
        os.remove(path)  # Shards of a replaced dataset with other shard counts.
  shutil.rmtree(progress_dir, ignore_errors=True)
