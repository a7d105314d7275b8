"""Pass 2 of a conversion: iterate the source again and write the shards.

The item at position p of a split belongs to shard p // shard_size, so shards are fixed chunks of
a deterministic order and their number is known up front (`train-00003-of-00010.array_record`).
Images are converted by worker processes (`data_prep.workers`, run by `parallel.ordered_map`:
spawn-safe, bounded in-flight work, results in order) and written by one `ShardWriter` per shard
(`.tmp`, renamed when complete), each recorded in `data_prep.resume` once finished.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Iterator, NamedTuple

from data_prep import parallel, resume
from data_prep.options import PrepareOptions
from data_prep.sources import Source
from data_prep.splits import resolve_items
from data_prep.tags import TagMapper
from data_prep.workers import ImageConfig, Result, Task, init_worker, process
from sw_zoo import progress
from sw_zoo.data.shard_writer import ShardWriter
from sw_zoo.data.vocab import CATEGORY_RATING, TagVocab

NO_TAGS = "no_tags"  # no label left after vocabulary selection (< min_tags)


class ShardPlan(NamedTuple):
  """How many items each split holds (from the scan) and how many shards they fill."""
  items: dict[str, int]
  shards: dict[str, int]


def plan_shards(split_sizes: dict[str, int], shard_size: int) -> ShardPlan:
  """The shard layout for the scanned split sizes, splits in name order."""
  items = dict(sorted(split_sizes.items()))
  return ShardPlan(items, {s: -(-n // shard_size) for s, n in items.items()})


class _OpenShard:
  def __init__(self, out_dir: str, split: str, index: int, num_shards: int, shard_size: int):
    self.split, self.index = split, index
    self.writer = ShardWriter(out_dir, split, shard_size, first_index=index,
                              num_shards=num_shards)
    self.skipped: list[dict] = []
    self.label_counts: collections.Counter = collections.Counter()
    self.num_boxes = 0

  def add(self, result: Result) -> None:
    if result.status == "ok":
      self.writer.write(result.payload)
      self.label_counts.update(result.labels)
      self.num_boxes += result.has_box
    else:
      self.skipped.append({"reason": result.status, "source": result.key,
                           "path": result.path, "detail": result.payload})

  def finish(self, out_dir: str, progress_dir: str) -> dict:
    names = self.writer.close()
    shard = names[0] if names else None
    record = {"split": self.split, "index": self.index, "shard": shard,
              "bytes": os.path.getsize(os.path.join(out_dir, shard)) if shard else 0,
              "num_records": self.writer.num_records, "skipped": self.skipped,
              "label_counts": sorted(self.label_counts.items()), "num_boxes": self.num_boxes}
    resume.write_record(progress_dir, record)
    return record


def _tasks(source: Source, mapper: TagMapper, vocab: TagVocab, plan: ShardPlan, done: set,
           options: PrepareOptions) -> Iterator[Task]:
  """One task per positioned item of a shard not yet `done`, with its labels in `vocab`."""
  size = options.shard_size
  index_of = {name: i for i, name in enumerate(vocab.names)}
  rating_index = {vocab.names[i]: int(i) for i in vocab.category_indices(CATEGORY_RATING)}
  positions = collections.Counter()
  for r in resolve_items(source, mapper, options, None, None):
    if r.reason is not None:
      continue
    position = positions[r.split]
    positions[r.split] += 1
    if position >= plan.items.get(r.split, 0):
      raise RuntimeError(f"the source yields more {r.split!r} items than when it was scanned "
                         f"({plan.items.get(r.split, 0)}); did it change during the run?")
    shard = position // size
    if (r.split, shard) in done:
      continue
    last = position == min((shard + 1) * size, plan.items[r.split]) - 1
    labels = {index_of[name] for name, _, _ in r.tags if name in index_of}
    if r.rating is not None and r.rating in rating_index:
      labels.add(rating_index[r.rating])
    error = None
    if len(labels) < options.min_tags:
      error = (NO_TAGS, f"{len(labels)} labels in the vocabulary (need {options.min_tags})")
    yield Task(r.split, shard, last, r.item_id, r.item.key, r.item.path, r.item.image,
               tuple(sorted(labels)), error, r.item.box, r.item.box_units)


def write_shards(source: Source, mapper: TagMapper, vocab: TagVocab, plan: ShardPlan, done: set,
                 options: PrepareOptions, out_dir: str, progress_dir: str, workers: int,
                 show_progress: bool, on_shard_done: Callable[[str, int], None]) -> None:
  """Writes and records every shard of `plan` not in `done`; calls on_shard_done(split, index)
  after each. Unfinished shards leave no file behind when interrupted."""
  size = options.shard_size
  todo = sum(min(size, plan.items[s] - i * size)
             for s, n in plan.shards.items() for i in range(n) if (s, i) not in done)
  if todo == 0:
    return
  config = ImageConfig(options.max_side, options.image_format, options.quality,
                       options.passthrough_jpeg)
  tasks = _tasks(source, mapper, vocab, plan, done, options)
  open_shards: dict[str, _OpenShard] = {}
  try:
    with progress.bar(todo, "prepare", unit=" img", enabled=show_progress) as bar:
      for result in parallel.ordered_map(process, tasks, workers=workers,
                                         initializer=init_worker, initargs=(config,)):
        shard = open_shards.get(result.split)
        if shard is None or shard.index != result.shard:
          shard = open_shards[result.split] = _OpenShard(
              out_dir, result.split, result.shard, plan.shards[result.split], size)
        shard.add(result)
        bar.update(1)
        if result.last:
          shard.finish(out_dir, progress_dir)
          del open_shards[result.split]
          on_shard_done(result.split, result.shard)
  except BaseException:
    for shard in open_shards.values():
      shard.writer.abort()  # Only .tmp files of unfinished shards are removed.
    raise
  if open_shards:
    raise RuntimeError(f"the source yielded fewer items than when it was scanned; unfinished "
                       f"shards: {sorted((s.split, s.index) for s in open_shards.values())}")
