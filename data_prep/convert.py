"""Turns any `data_prep.sources` source into an sw_zoo dataset: ArrayRecord shards +
selected_tags.csv + dataset.json (+ report.json).

Two passes over the source's metadata, one over its images:

1. **Scan** (`data_prep.scan`, metadata only): normalise tags (aliases, blacklist, categories),
   drop unusable items, assign each remaining item a split and a position in it
   (`data_prep.splits`), and count tags on the training split. The vocabulary is chosen from
   these counts (`tags.select_vocab`).
2. **Write** (`data_prep.write`): iterate the source again; the item at position p of a split
   belongs to shard p // shard_size, so shards are fixed chunks of a deterministic order and
   their number is known up front. Images are converted by worker processes
   (`data_prep.workers`) and written one shard at a time.

3. **Prune** (`data_prep.prune`): a non-rating tag whose training images all turned out
   unreadable is removed from the vocabulary and the shards' label indices.

Resuming (`data_prep.resume`): every finished shard is recorded, so a rerun with the same inputs
and arguments picks up where an interrupted one stopped, and rerunning a completed conversion is
a no-op. "Same inputs" means same content (`data_prep.inputs`: size + mtime, or sha256, of every
image and caption file), so fixing an image or editing a caption is noticed, and a completed
dataset whose inputs changed is rebuilt only with --overwrite. Output bytes depend only on inputs
and arguments, not on the number of workers or on interruptions.

Output directory (`check_output_dir`): prepare writes only into a directory that is absent,
empty or holds its own work (dataset.json or an interrupted run's `_prepare/state.json`); never
into one that is or contains its inputs (it may lie inside a folder source's tree, which the walk
skips).

Bad input never stops a run: unreadable, truncated or empty images, missing files, non-UTF-8
captions, bad metadata rows and posts left without tags are skipped, counted by reason and listed
with their paths in report.json (`data_prep.report`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

from data_prep import inputs, prune, resume, scan, write
from data_prep import report as report_lib
from data_prep.options import PrepareOptions
from data_prep.report import REPORT_FILENAME
from data_prep.resume import PROGRESS_DIR
from data_prep.sources import Source
from sw_zoo import storage
from sw_zoo.data.atomic_file import atomic_write_text, check_output_dir
from sw_zoo.data.dataset_info import DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME, write_dataset_info
from sw_zoo.data.records import SCHEMA_VERSION
from sw_zoo.data.shard_writer import SHARD_SUFFIX
from sw_zoo.data.vocab import write_selected_tags

# Importable from here, where the CLI, inspect_data and the tests look for them.
__all__ = ["PROGRESS_DIR", "REPORT_FILENAME", "PrepareOptions", "prepare"]

log = logging.getLogger(__name__)

# Test hook: called as hook(split, shard_index) after each shard is recorded.
_after_shard_hook: Callable[[str, int], None] | None = None


def _shard_done(split: str, index: int) -> None:
  # Looked up at call time, so tests can monkeypatch the hook on this module.
  if _after_shard_hook is not None:
    _after_shard_hook(split, index)


# Keys of `Source.describe()` that name files or directories the source reads.
_INPUT_KEYS = ("root", "manifest", "metadata", "database", "directory", "image_root")


def input_paths(source: Source) -> list[str]:
  """The files and directories `source` reads, which its output directory must not be or
  contain (from its describe(): root, manifest, metadata, database, directory, image_root)."""
  described = source.describe()
  paths = []
  for key in _INPUT_KEYS:
    value = described.get(key)
    for path in value if isinstance(value, (list, tuple)) else [value]:
      if isinstance(path, (str, os.PathLike)) and os.fspath(path):
        paths.append(os.fspath(path))
  return paths


def is_prepare_output(path: str) -> bool:
  """Whether `path` holds a dataset (complete) or an interrupted conversion."""
  return (os.path.isfile(os.path.join(path, DATASET_INFO_FILENAME))
          or os.path.isfile(os.path.join(path, PROGRESS_DIR, "state.json")))


def prepare(source: Source, out_dir: str | os.PathLike,
            options: PrepareOptions = PrepareOptions(), *, workers: int | None = None,
            overwrite: bool = False, force: bool = False, fingerprint: str = "stat",
            progress: bool = True) -> dict[str, Any]:
  """Converts `source` into a dataset in `out_dir`; returns the report (also in report.json).

  `out_dir` must be absent, empty or hold a dataset / interrupted conversion (`force=True`
  writes into any other directory, except one that is or contains the inputs); otherwise
  OutputRefused before anything is written. A completed `out_dir` made from the same inputs and
  options is left alone (no-op); one made differently is replaced only with `overwrite=True`,
  otherwise FileExistsError saying what changed. An interrupted run with the same inputs and
  options resumes. `fingerprint`: how input files are compared, "stat" (size + mtime) or "hash"
  (sha256 of their bytes). `workers` defaults to the CPU count; 1 (or 0) converts in this
  process. The bytes written do not depend on `workers`.
  """
  options.validate()
  inputs.InputHasher(fingerprint)  # ValueError for an unknown mode, before any work.
  out = os.fspath(out_dir)
  run = dict(workers=workers, overwrite=overwrite, fingerprint=fingerprint, progress=progress)
  check_output_dir(out, is_own=is_prepare_output, what="a dataset made by prepare",
                   force=force, protect=input_paths(source))
  if not storage.is_remote(out):
    return _prepare(source, os.path.abspath(out), options, **run)
  # gs://: converted in the bucket's local mirror (so resume and the no-op rerun work as locally),
  # then uploaded with dataset.json last; an interrupted run uploads its finished shards and
  # progress records, so a rerun on any machine resumes from them.
  with storage.output_dir(out, last=[DATASET_INFO_FILENAME], owned=_is_prepare_file, push_on_error=True) as local:
    return _prepare(source, local, options, **run)


def _is_prepare_file(rel: str) -> bool:
  """Files prepare makes (the only ones it may remove from a bucket)."""
  return (rel.startswith(PROGRESS_DIR + "/") or rel.endswith(SHARD_SUFFIX)
          or rel in (DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME, REPORT_FILENAME, inputs.INPUT_MANIFEST_FILENAME))


def _prepare(source: Source, out_dir: str, options: PrepareOptions, *, workers: int | None, overwrite: bool,
             fingerprint: str, progress: bool) -> dict[str, Any]:
  hasher = inputs.InputHasher(fingerprint)
  workers = (os.cpu_count() or 1) if workers is None else workers
  start = time.perf_counter()
  mapper = options.make_mapper()

  scanned = scan.scan(source, mapper, options, show_progress=progress, hasher=hasher)
  pairs = hasher.pairs()
  del hasher
  vocab = scan.choose_vocab(scanned, source, mapper, options)
  plan = write.plan_shards(scanned.split_sizes, options.shard_size)
  generator = resume.generator_info(
      source, options, plan.items, vocab,
      {"mode": fingerprint, "items": int(len(pairs)), "digest": inputs.digest(pairs)})
  completed = resume.completed_report(out_dir, generator, pairs, overwrite)
  if completed is not None:
    return completed

  progress_dir = resume.start_run(out_dir, generator["fingerprint"])
  done = resume.load_done(progress_dir, out_dir, plan.shards)
  if done:
    log.info("resuming: %d of %d shards already written", len(done), sum(plan.shards.values()))
  write.write_shards(source, mapper, vocab, plan, done, options, out_dir, progress_dir, workers,
                     show_progress=progress, on_shard_done=_shard_done)

  written = resume.collect(progress_dir, out_dir, plan.shards, vocab)
  written, pruned = prune.drop_unused_tags(out_dir, progress_dir, plan.shards, written)
  write_selected_tags(os.path.join(out_dir, SELECTED_TAGS_FILENAME), written.vocab)
  report = report_lib.build_report(out_dir, source.kind, scanned, written, resumed=len(done),
                                   start=start)
  report["tags"].update(pruned)
  orphans = getattr(source, "orphan_captions", None)  # sources with sidecar files (folder)
  if orphans is not None:
    report["orphan_captions"] = report_lib.orphan_entry(orphans())
  # Pruned tags were selected (and are reported as dropped), not "not selected".
  report["tags"]["not_selected"] -= sum(scanned.counts[n] for n in pruned["dropped_unused"])
  atomic_write_text(os.path.join(out_dir, REPORT_FILENAME), json.dumps(report, indent=1) + "\n")
  inputs.save(out_dir, pairs)  # Before dataset.json, so a complete dataset always has it.
  write_dataset_info(out_dir, {  # Last: its presence marks the dataset complete.
      "schema_version": SCHEMA_VERSION, "source": f"{source.kind}", "image_size": None,
      "num_labels": len(written.vocab), "splits": written.splits, "generator": generator})
  resume.finish(out_dir, progress_dir, written.splits)
  if progress:
    report_lib.print_summary(out_dir, report)
  return report
