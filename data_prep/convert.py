"""Turns any `data_prep.sources` source into an sw_zoo dataset: ArrayRecord shards +
selected_tags.csv + dataset.json (+ report.json).

Two passes over the source's metadata, one over its images:

1. **Scan** (metadata only): normalise tags (aliases, blacklist, categories), drop unusable
   items, assign each remaining item a split and a position in it, and count tags on the
   training split. The vocabulary is chosen from these counts (`tags.select_vocab`).
2. **Write**: iterate the source again; the item at position p of a split belongs to shard
   p // shard_size, so shards are fixed chunks of a deterministic order and their number is
   known up front (`train-00003-of-00010.array_record`). Images are decoded, resized and
   re-encoded by worker processes (`parallel.ordered_map`: spawn-safe, bounded in-flight work,
   results in order) and written by one `ShardWriter` per shard (`.tmp`, renamed when complete).

Splits: sources with post ids use the id's last three digits, `bucket = id % 1000`, as
SW-CV-ModelZoo did for Danbooru2021 (its train = buckets 0000-0899, 0900-0969 held out,
validation = 0970-0999, i.e. `val_permille=30, holdout_permille=70`). Folders and manifests
without ids use `bucket = sha1(relative path) % 1000`. Then bucket >= 1000 - val_permille is
validation, the `holdout_permille` buckets below that are left out, the rest is train. Sources
with their own splits (tfds) keep them.

Resuming: after each shard a small JSON file in `<out>/_prepare/` records it (file, size,
skipped items, label counts). A rerun with the same inputs and arguments (checked by a
fingerprint of arguments, vocabulary and split sizes) skips recorded shards; a rerun with other
arguments starts over. Output bytes depend only on inputs and arguments, not on the number of
workers or on interruptions. `dataset.json` is written last; its presence marks completion, and
rerunning a completed conversion is a no-op.

Bad input never stops a run: unreadable, truncated or empty images, missing files, non-UTF-8
captions, bad metadata rows and posts left without tags are skipped, counted by reason and listed
with their paths in report.json.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Iterator, NamedTuple

from data_prep import parallel
from data_prep.sources import NOT_IMAGE, Source, SourceItem
from data_prep.tags import (DEFAULT_CATEGORIES, RATING_TAGS, TagMapper, TagStats, load_aliases,
                            load_blacklist, load_tag_table, select_vocab)
from sw_zoo.data.atomic_file import atomic_write_text
from sw_zoo.data.dataset_info import (DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME,
                                      read_dataset_info, write_dataset_info)
from sw_zoo.data.image_io import IMAGE_FORMATS, UNREADABLE_IMAGE, ImageError, prepare_image
from sw_zoo.data.records import SCHEMA_VERSION, encode_record
from sw_zoo.data.shard_writer import SHARD_SUFFIX, ShardWriter
from sw_zoo.data.vocab import (CATEGORY_NAMES, CATEGORY_RATING, Tag, TagVocab,
                               write_selected_tags)

log = logging.getLogger(__name__)

GENERATOR_NAME = "data_prep"
# Bump whenever the bytes written for the same inputs change, so old datasets are not reused.
GENERATOR_VERSION = 1
PROGRESS_DIR = "_prepare"
REPORT_FILENAME = "report.json"

NO_TAGS = "no_tags"                # no label left after vocabulary selection (< min_tags)
HELD_OUT = "held_out"              # bucket in the hold-out range
RATING_FILTERED = "rating_filtered"  # rating not in keep_ratings
# Items left out by design, counted without listing them; every other reason is bad input.
EXCLUSION_REASONS = (HELD_OUT, RATING_FILTERED, NOT_IMAGE)

# Test hook: called as hook(split, shard_index) after each shard is recorded.
_after_shard_hook: Callable[[str, int], None] | None = None


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything besides the source that decides the output bytes (see `python -m data_prep`)."""
  max_side: int | None = 512
  image_format: str = "jpeg"
  quality: int = 95
  passthrough_jpeg: bool = False
  shard_size: int = 1000
  val_permille: int = 50
  holdout_permille: int = 0
  categories: tuple[int, ...] = DEFAULT_CATEGORIES  # () keeps every category.
  min_count: dict = dataclasses.field(default_factory=dict)  # {category or None: n}
  top_k: dict = dataclasses.field(default_factory=dict)
  blacklist: str | None = None
  aliases: str | None = None
  tag_categories: str | None = None
  keep_ratings: tuple[str, ...] = ()  # () keeps every post.
  rating_s_as: str = "sensitive"
  min_tags: int = 1

  def validate(self) -> None:
    if self.max_side is not None and self.max_side < 1:
      raise ValueError(f"max_side must be positive (or None to keep sizes), got {self.max_side}")
    if self.image_format not in IMAGE_FORMATS:
      raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
    if not 1 <= self.quality <= 100:
      raise ValueError(f"quality must be in [1, 100], got {self.quality}")
    if self.shard_size < 1:
      raise ValueError(f"shard_size must be positive, got {self.shard_size}")
    if not (0 <= self.val_permille and 0 <= self.holdout_permille
            and self.val_permille + self.holdout_permille < 1000):
      raise ValueError(f"need val_permille, holdout_permille >= 0 with a sum below 1000, got "
                       f"{self.val_permille}, {self.holdout_permille}")
    for rating in self.keep_ratings:
      if rating not in RATING_TAGS:
        raise ValueError(f"keep_ratings: {rating!r} is not one of {RATING_TAGS}")
    if self.min_tags < 0:
      raise ValueError(f"min_tags must be non-negative, got {self.min_tags}")
    for path in (self.blacklist, self.aliases, self.tag_categories):
      if path is not None and not os.path.isfile(path):
        raise ValueError(f"{path} does not exist")

  def as_json(self) -> dict[str, Any]:
    def file_info(path):
      if path is None:
        return None
      with open(path, "rb") as f:
        return {"path": os.path.abspath(path), "sha256": hashlib.sha256(f.read()).hexdigest()}

    result = dataclasses.asdict(self)
    for key in ("min_count", "top_k"):
      result[key] = {CATEGORY_NAMES.get(k, str(k)) if k is not None else "*": v
                     for k, v in sorted(result[key].items(), key=lambda kv: str(kv[0]))}
    result["categories"] = [CATEGORY_NAMES.get(c, str(c)) for c in self.categories] or "all"
    for key in ("blacklist", "aliases", "tag_categories"):
      result[key] = file_info(result[key])
    result["keep_ratings"] = list(self.keep_ratings)
    return result

  def make_mapper(self) -> TagMapper:
    return TagMapper(aliases=load_aliases(self.aliases) if self.aliases else None,
                     blacklist=load_blacklist(self.blacklist) if self.blacklist else (),
                     tag_table=load_tag_table(self.tag_categories) if self.tag_categories
                     else None,
                     categories=self.categories, rating_s_as=self.rating_s_as)


# ---------------------------------------------------------------------------------------------
# Splits and per-item resolution (identical in both passes).

def _key_bucket(key: str) -> int:
  return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8],
                        "big") % 1000


def split_of_bucket(bucket: int, val_permille: int, holdout_permille: int) -> str | None:
  if bucket >= 1000 - val_permille:
    return "validation"
  if bucket >= 1000 - val_permille - holdout_permille:
    return None
  return "train"


class _Resolved(NamedTuple):
  item: SourceItem
  item_id: int
  split: str | None
  reason: str | None  # Why the item is not positioned (error or exclusion), else None.
  detail: str
  tags: list  # [(name, category, tag_id)]
  rating: str | None


def _resolve_items(source: Source, mapper: TagMapper, options: PrepareOptions,
                   stats: TagStats | None, unknown_ratings: collections.Counter | None
                   ) -> Iterator[_Resolved]:
  carve_validation = source.split_by == "source" and not getattr(source, "has_validation", True)
  for counter, item in enumerate(source):
    item_id = item.id if item.id is not None else counter
    if item.error is not None:
      yield _Resolved(item, item_id, None, item.error[0], item.error[1], [], None)
      continue
    tags, caption_rating = mapper.map(item.tags, stats)
    if stats is not None:
      for name in item.unknown_tags:
        stats.unknown[name] += 1
    rating = mapper.rating(item.rating) if item.rating is not None else None
    if item.rating is not None and rating is None and unknown_ratings is not None:
      unknown_ratings[str(item.rating)] += 1
    rating = rating or caption_rating
    if options.keep_ratings and rating not in options.keep_ratings:
      yield _Resolved(item, item_id, None, RATING_FILTERED, f"rating {rating}", [], rating)
      continue
    if source.split_by == "source" and not (carve_validation and item.split == "train"):
      split = item.split
    else:
      bucket = item_id % 1000 if source.split_by in ("id", "source") else _key_bucket(item.key)
      split = split_of_bucket(bucket, options.val_permille, options.holdout_permille)
    if split is None:
      yield _Resolved(item, item_id, None, HELD_OUT, "", [], rating)
      continue
    yield _Resolved(item, item_id, split, None, "", tags, rating)


def _skip_entry(reason: str, item: SourceItem, detail: str) -> dict[str, Any]:
  return {"reason": reason, "source": item.key, "path": item.path, "detail": detail}


# ---------------------------------------------------------------------------------------------
# Pass 1: scan.

@dataclasses.dataclass
class _Scan:
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  categories: dict = dataclasses.field(default_factory=dict)
  tag_ids: dict = dataclasses.field(default_factory=dict)
  rating_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  has_ratings: bool = False
  split_sizes: dict = dataclasses.field(default_factory=dict)
  rejected_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  rejected: list = dataclasses.field(default_factory=list)  # Bad-input entries only.
  tag_stats: TagStats = dataclasses.field(default_factory=TagStats)
  unknown_ratings: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _scan(source: Source, mapper: TagMapper, options: PrepareOptions, progress: bool) -> _Scan:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  scan = _Scan()
  if source.split_by != "source":
    scan.split_sizes = {"train": 0, "validation": 0}
  resolved = _resolve_items(source, mapper, options, scan.tag_stats, scan.unknown_ratings)
  for r in tqdm(resolved, desc="scan", unit=" items", disable=not progress):
    if r.reason is not None:
      scan.rejected_counts[r.reason] += 1
      if r.reason not in EXCLUSION_REASONS:
        scan.rejected.append(_skip_entry(r.reason, r.item, r.detail))
      continue
    scan.split_sizes[r.split] = scan.split_sizes.get(r.split, 0) + 1
    scan.has_ratings |= r.rating is not None
    if r.split != "train":
      continue
    for name, category, tag_id in r.tags:
      scan.counts[name] += 1
      scan.categories.setdefault(name, category)
      if tag_id is not None:
        scan.tag_ids.setdefault(name, tag_id)
    if r.rating is not None:
      scan.rating_counts[r.rating] += 1
  return scan


# ---------------------------------------------------------------------------------------------
# Pass 2: workers.

class _ImageConfig(NamedTuple):
  max_side: int | None
  image_format: str
  quality: int
  passthrough_jpeg: bool


class _Task(NamedTuple):
  split: str
  shard: int
  last: bool  # Last item of its shard.
  item_id: int
  key: str
  path: str | None
  image: bytes | None
  labels: tuple[int, ...]
  error: tuple[str, str] | None


class _Result(NamedTuple):
  split: str
  shard: int
  last: bool
  key: str
  path: str | None
  labels: tuple[int, ...]
  status: str  # "ok" or a skip reason.
  payload: Any  # Record bytes, or the skip detail.


_worker_config: _ImageConfig | None = None


def _init_worker(config: _ImageConfig) -> None:
  global _worker_config
  _worker_config = config


def _process(task: _Task) -> _Result:
  """Image -> record bytes, or the reason it was skipped. Never raises for bad input."""
  def result(status, payload):
    return _Result(task.split, task.shard, task.last, task.key, task.path, task.labels, status,
                   payload)

  if task.error is not None:
    return result(*task.error)
  c = _worker_config
  try:
    image = prepare_image(task.image if task.image is not None else task.path,
                          max_side=c.max_side, image_format=c.image_format, quality=c.quality,
                          passthrough_jpeg=c.passthrough_jpeg)
    return result("ok", encode_record({"id": task.item_id, "image": image,
                                       "labels": list(task.labels), "source": task.key}))
  except ImageError as e:
    return result(e.reason, str(e))
  except Exception as e:  # Whatever a decoder throws, this item is skipped, the run goes on.
    return result(UNREADABLE_IMAGE, f"{task.path or task.key}: {type(e).__name__}: {e}")


# ---------------------------------------------------------------------------------------------
# Progress records.

def _progress_path(progress_dir: str, split: str, index: int) -> str:
  return os.path.join(progress_dir, f"{split}-{index:05d}.json")


def _read_progress(progress_dir: str, out_dir: str, split: str, index: int) -> dict | None:
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
  return record


def _load_done(progress_dir: str, out_dir: str, plan: dict[str, int]) -> set:
  """{(split, shard)} recorded complete with an intact file (records are read again later, one
  at a time, so memory does not grow with the number of shards)."""
  return {(split, index) for split, num_shards in plan.items() for index in range(num_shards)
          if _read_progress(progress_dir, out_dir, split, index) is not None}


class _OpenShard:
  def __init__(self, out_dir: str, split: str, index: int, num_shards: int, shard_size: int):
    self.split, self.index = split, index
    self.writer = ShardWriter(out_dir, split, shard_size, first_index=index,
                              num_shards=num_shards)
    self.skipped: list[dict] = []
    self.label_counts: collections.Counter = collections.Counter()

  def finish(self, out_dir: str, progress_dir: str) -> dict:
    names = self.writer.close()
    shard = names[0] if names else None
    record = {"split": self.split, "index": self.index, "shard": shard,
              "bytes": os.path.getsize(os.path.join(out_dir, shard)) if shard else 0,
              "num_records": self.writer.num_records, "skipped": self.skipped,
              "label_counts": sorted(self.label_counts.items())}
    atomic_write_text(_progress_path(progress_dir, self.split, self.index),
                      json.dumps(record) + "\n")
    return record


def _write_shards(source: Source, mapper: TagMapper, vocab: TagVocab, plan_items: dict[str, int],
                  plan_shards: dict[str, int], done: set, options: PrepareOptions, out_dir: str,
                  progress_dir: str, workers: int, progress: bool) -> None:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  size = options.shard_size
  todo = sum(min(size, plan_items[s] - i * size)
             for s, n in plan_shards.items() for i in range(n) if (s, i) not in done)
  if todo == 0:
    return
  index_of = {name: i for i, name in enumerate(vocab.names)}
  rating_index = {vocab.names[i]: int(i) for i in vocab.category_indices(CATEGORY_RATING)}

  def tasks() -> Iterator[_Task]:
    positions = collections.Counter()
    for r in _resolve_items(source, mapper, options, None, None):
      if r.reason is not None:
        continue
      position = positions[r.split]
      positions[r.split] += 1
      if position >= plan_items.get(r.split, 0):
        raise RuntimeError(f"the source yields more {r.split!r} items than when it was scanned "
                           f"({plan_items.get(r.split, 0)}); did it change during the run?")
      shard = position // size
      if (r.split, shard) in done:
        continue
      last = position == min((shard + 1) * size, plan_items[r.split]) - 1
      labels = {index_of[name] for name, _, _ in r.tags if name in index_of}
      if r.rating is not None and r.rating in rating_index:
        labels.add(rating_index[r.rating])
      error = None
      if len(labels) < options.min_tags:
        error = (NO_TAGS, f"{len(labels)} labels in the vocabulary (need {options.min_tags})")
      yield _Task(r.split, shard, last, r.item_id, r.item.key, r.item.path, r.item.image,
                  tuple(sorted(labels)), error)

  config = _ImageConfig(options.max_side, options.image_format, options.quality,
                        options.passthrough_jpeg)
  open_shards: dict[str, _OpenShard] = {}
  try:
    with tqdm(total=todo, desc="prepare", unit=" img", disable=not progress) as bar:
      for result in parallel.ordered_map(_process, tasks(), workers=workers,
                                         initializer=_init_worker, initargs=(config,)):
        shard = open_shards.get(result.split)
        if shard is None or shard.index != result.shard:
          shard = open_shards[result.split] = _OpenShard(
              out_dir, result.split, result.shard, plan_shards[result.split], size)
        if result.status == "ok":
          shard.writer.write(result.payload)
          shard.label_counts.update(result.labels)
        else:
          shard.skipped.append({"reason": result.status, "source": result.key,
                                "path": result.path, "detail": result.payload})
        bar.update(1)
        if result.last:
          shard.finish(out_dir, progress_dir)
          del open_shards[result.split]
          if _after_shard_hook is not None:
            _after_shard_hook(result.split, result.shard)
  except BaseException:
    for shard in open_shards.values():
      shard.writer.abort()  # Only .tmp files of unfinished shards are removed.
    raise
  if open_shards:
    raise RuntimeError(f"the source yielded fewer items than when it was scanned; unfinished "
                       f"shards: {sorted((s.split, s.index) for s in open_shards.values())}")


# ---------------------------------------------------------------------------------------------
# The whole conversion.

def _vocab_summary(vocab: TagVocab) -> dict[str, int]:
  summary = collections.Counter(CATEGORY_NAMES.get(int(c), str(int(c))) for c in vocab.categories)
  return dict(summary)


def _fingerprint(payload: Any) -> str:
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _print_summary(out_dir: str, report: dict) -> None:
  written = ", ".join(f"{s} {n}" for s, n in report["written"].items())
  print(f"prepared {out_dir}: {written} images; {report['num_labels']} tags "
        f"{report['vocab']}")
  if report["skipped"]:
    print(f"skipped {sum(report['skipped'].values())} bad items: " +
          ", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items())))
  if report["excluded"]:
    print("excluded by design: " +
          ", ".join(f"{k} {v}" for k, v in sorted(report["excluded"].items())))
  unknown = report["tags"]["unknown"]["occurrences"]
  if unknown:
    print(f"unknown tags: {unknown} occurrences of {report['tags']['unknown']['distinct']} "
          "names (dropped)")
  print(f"details: {os.path.join(out_dir, REPORT_FILENAME)}")


def prepare(source: Source, out_dir: str | os.PathLike,
            options: PrepareOptions = PrepareOptions(), *, workers: int | None = None,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
  """Converts `source` into a dataset in `out_dir`; returns the report (also in report.json).

  A completed `out_dir` made from the same inputs and options is left alone (no-op); one made
  differently is replaced only with `overwrite=True`, otherwise FileExistsError. An interrupted
  run with the same inputs and options resumes. `workers` defaults to the CPU count; 1 (or 0)
  converts in this process. The bytes written do not depend on `workers`.
  """
  options.validate()
  out_dir = os.path.abspath(os.fspath(out_dir))
  workers = (os.cpu_count() or 1) if workers is None else workers
  start = time.perf_counter()
  mapper = options.make_mapper()

  scan = _scan(source, mapper, options, progress)
  if not scan.split_sizes.get("train"):
    raise ValueError(f"{source.kind} source has no usable training items (rejected: "
                     f"{dict(scan.rejected_counts)}); see the first problems: "
                     f"{[e['detail'] for e in scan.rejected[:5]]}")
  rating_counts = scan.rating_counts if (scan.has_ratings and mapper.uses_ratings) else None
  vocab = select_vocab(scan.counts, scan.categories, scan.tag_ids, rating_counts=rating_counts,
                       min_count=options.min_count, top_k=options.top_k)
  if len(vocab) == 0:
    raise ValueError(f"no tag passes the vocabulary selection (min_count {options.min_count}, "
                     f"top_k {options.top_k}, categories {options.categories}); "
                     f"{len(scan.counts)} distinct training tags were seen")
  plan_items = dict(sorted(scan.split_sizes.items()))
  plan_shards = {s: -(-n // options.shard_size) for s, n in plan_items.items()}
  generator = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "kind": source.kind,
               "source": source.describe(), "options": options.as_json()}
  generator["fingerprint"] = _fingerprint(
      {"generator": generator, "plan": plan_items,
       "vocab": [(t.name, t.category, t.tag_id) for t in vocab]})

  info_path = os.path.join(out_dir, DATASET_INFO_FILENAME)
  report_path = os.path.join(out_dir, REPORT_FILENAME)
  if os.path.exists(info_path):
    try:
      existing = read_dataset_info(out_dir)
      same = existing.get("generator", {}).get("fingerprint") == generator["fingerprint"]
      problem = "a dataset made from other inputs or options"
    except (ValueError, FileNotFoundError) as e:
      same, problem = False, f"an invalid dataset ({e})"
    if same:
      log.info("%s already holds this dataset; nothing to do", out_dir)
      if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as f:
          return json.load(f)
      return {"out_dir": out_dir, "written": {s: v["num_examples"]
                                              for s, v in existing["splits"].items()}}
    if not overwrite:
      raise FileExistsError(f"{out_dir} already holds {problem}; pass --overwrite to replace "
                            "it, or choose another directory")
    os.remove(info_path)  # From here until the new dataset.json the directory is incomplete.

  progress_dir = os.path.join(out_dir, PROGRESS_DIR)
  state_path = os.path.join(progress_dir, "state.json")
  if os.path.isfile(state_path):
    with open(state_path, encoding="utf-8") as f:
      state = json.load(f)
    if state.get("fingerprint") != generator["fingerprint"]:
      log.warning("%s holds an interrupted conversion with other inputs or options; starting "
                  "over", out_dir)
      shutil.rmtree(progress_dir)
  os.makedirs(progress_dir, exist_ok=True)
  atomic_write_text(state_path, json.dumps({"fingerprint": generator["fingerprint"]}) + "\n")
  for leftover in glob.glob(os.path.join(out_dir, f"*{SHARD_SUFFIX}.tmp")):
    os.remove(leftover)

  done = _load_done(progress_dir, out_dir, plan_shards)
  if done:
    log.info("resuming: %d of %d shards already written", len(done), sum(plan_shards.values()))
  resumed = len(done)
  _write_shards(source, mapper, vocab, plan_items, plan_shards, done, options, out_dir,
                progress_dir, workers, progress)

  # Assemble from the per-shard records, in order.
  splits_info, skipped_items = {}, list(scan.rejected)
  label_counts = collections.Counter()
  for split, num_shards in plan_shards.items():
    shards, num_examples = [], 0
    for index in range(num_shards):
      record = _read_progress(progress_dir, out_dir, split, index)
      if record is None:
        raise RuntimeError(f"shard {index} of split {split!r} is missing after the run")
      if record["shard"]:
        shards.append(record["shard"])
      num_examples += record["num_records"]
      skipped_items += record["skipped"]
      if split == "train":
        label_counts.update({int(i): int(n) for i, n in record["label_counts"]})
    splits_info[split] = {"num_examples": num_examples, "shards": shards}
  if splits_info.get("validation", {}).get("num_examples", 1) == 0:
    log.warning("the validation split is empty; raise --val-permille or add data")

  vocab = TagVocab([Tag(name=t.name, category=t.category, count=label_counts.get(i, 0),
                        tag_id=t.tag_id) for i, t in enumerate(vocab)])
  write_selected_tags(os.path.join(out_dir, SELECTED_TAGS_FILENAME), vocab)
  skipped = collections.Counter(e["reason"] for e in skipped_items)
  excluded = {r: scan.rejected_counts[r] for r in EXCLUSION_REASONS if scan.rejected_counts[r]}
  elapsed = time.perf_counter() - start
  report = {
      "out_dir": out_dir, "source": source.kind,
      "written": {s: v["num_examples"] for s, v in splits_info.items()},
      "skipped": dict(sorted(skipped.items())), "excluded": excluded,
      "num_labels": len(vocab), "vocab": _vocab_summary(vocab),
      "shards": {s: len(v["shards"]) for s, v in splits_info.items()},
      "resumed_shards": resumed, "elapsed_s": round(elapsed, 2),
      "tags": {**scan.tag_stats.as_dict(),
               "not_selected": sum(c for n, c in scan.counts.items() if n not in vocab),
               "unknown_ratings": dict(scan.unknown_ratings)},
      "skipped_items": skipped_items,
  }
  atomic_write_text(report_path, json.dumps(report, indent=1) + "\n")
  write_dataset_info(out_dir, {
      "schema_version": SCHEMA_VERSION, "source": f"{source.kind}", "image_size": None,
      "num_labels": len(vocab), "splits": splits_info, "generator": generator})

  keep = {name for split in splits_info.values() for name in split["shards"]}
  for split in splits_info:
    for path in glob.glob(os.path.join(out_dir, f"{split}-*-of-*{SHARD_SUFFIX}")):
      if os.path.basename(path) not in keep:
        os.remove(path)  # Shards of a replaced dataset with other shard counts.
  shutil.rmtree(progress_dir, ignore_errors=True)
  if progress:
    _print_summary(out_dir, report)
  return report
