"""Pass 1 of a conversion (metadata only): normalise tags, drop unusable items, count split sizes
and training-split tags, and choose the vocabulary from those counts (`tags.select_vocab`)."""

from __future__ import annotations

import collections
import dataclasses

from data_prep.inputs import InputHasher
from data_prep.options import PrepareOptions
from data_prep.sources import Source
from data_prep.splits import EXCLUSION_REASONS, resolve_items
from data_prep.tags import TagMapper, TagStats, select_vocab
from sw_zoo import progress
from sw_zoo.data.vocab import TagVocab


@dataclasses.dataclass
class Scan:
  """What pass 1 learnt: training tag counts, split sizes, and the items it rejected."""
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


def scan(source: Source, mapper: TagMapper, options: PrepareOptions, show_progress: bool,
         hasher: InputHasher | None = None) -> Scan:
  """Reads the source's metadata once and counts what the vocabulary and the shard plan need;
  every item, rejected ones included, is also fed to `hasher` (the inputs' fingerprint)."""
  result = Scan()
  if source.split_by != "source":
    result.split_sizes = {"train": 0, "validation": 0}
  resolved = resolve_items(source, mapper, options, result.tag_stats, result.unknown_ratings)
  with progress.bar(None, "scan", unit=" items", enabled=show_progress) as bar:
    for r in resolved:
      bar.update(1)
      if hasher is not None:
        hasher.add(r.item)
      if r.reason is not None:
        result.rejected_counts[r.reason] += 1
        if r.reason not in EXCLUSION_REASONS:
          result.rejected.append({"reason": r.reason, "source": r.item.key, "path": r.item.path,
                                  "detail": r.detail})
        continue
      result.split_sizes[r.split] = result.split_sizes.get(r.split, 0) + 1
      result.has_ratings |= r.rating is not None
      if r.split != "train":
        continue
      for name, category, tag_id in r.tags:
        result.counts[name] += 1
        result.categories.setdefault(name, category)
        if tag_id is not None:
          result.tag_ids.setdefault(name, tag_id)
      if r.rating is not None:
        result.rating_counts[r.rating] += 1
  return result


def choose_vocab(scanned: Scan, source: Source, mapper: TagMapper,
                 options: PrepareOptions) -> TagVocab:
  """The vocabulary (without counts) chosen from the training-split counts; ValueError when there
  is nothing to train on, so a run fails before it writes anything."""
  if not scanned.split_sizes.get("train"):
    raise ValueError(f"{source.kind} source has no usable training items (rejected: "
                     f"{dict(scanned.rejected_counts)}); see the first problems: "
                     f"{[e['detail'] for e in scanned.rejected[:5]]}")
  use_ratings = scanned.has_ratings and mapper.uses_ratings
  rating_counts = scanned.rating_counts if use_ratings else None
  vocab = select_vocab(scanned.counts, scanned.categories, scanned.tag_ids,
                       rating_counts=rating_counts, min_count=options.min_count,
                       top_k=options.top_k)
  if len(vocab) == 0:
    raise ValueError(f"no tag passes the vocabulary selection (min_count {options.min_count}, "
                     f"top_k {options.top_k}, categories {options.categories}); "
                     f"{len(scanned.counts)} distinct training tags were seen")
  return vocab
