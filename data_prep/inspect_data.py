"""`python -m data_prep inspect DATA_DIR`: what is in a dataset, and a contact sheet to eyeball.

Prints examples and shards per split, tags and label occurrences per category (training counts
from selected_tags.csv), the most and least frequent tags, the skip report if there is one, and
(with `scan=True`) label statistics per split read from the records themselves. Renders `samples`
decoded images of one split, evenly spaced through it, with their tags (ratings first, then by
training frequency) as a PNG contact sheet.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import grain
import numpy as np

from data_prep.convert import REPORT_FILENAME
from sw_zoo.data import contact_sheet
from sw_zoo import storage
from sw_zoo.data.dataset_info import read_dataset_info, selected_tags_path, split_paths
from sw_zoo.data.records import decode_image, decode_record
from sw_zoo.data.vocab import TagVocab, category_name, read_selected_tags


def _split_source(data_dir: str, split: str, info: dict):
  return grain.sources.ArrayRecordDataSource(split_paths(data_dir, split, info))


def render_contact_sheet(records: list[dict], vocab: TagVocab, out_path: str) -> None:
  """Decoded record images with their tags (ratings first, then by training frequency)."""
  cells = []
  for record in records:
    labels = sorted(record["labels"].tolist(),
                    key=lambda i: (vocab.categories[i] != 9, -int(vocab.counts[i]), i))
    names = [vocab.names[i] for i in labels]
    cells.append((decode_image(record["image"]), [f"#{record['id']}:"] + [n + "," for n in names[:-1]] + names[-1:]))
  contact_sheet.render(cells, out_path)


def inspect(data_dir: str | os.PathLike, *, samples: int = 16, out: str | None = None,
            split: str = "validation", top: int = 20, scan: bool = False) -> dict[str, Any]:
  """Prints the summary; writes the contact sheet to `out` when samples > 0. Returns the stats."""
  data_dir = os.fspath(data_dir)
  info = read_dataset_info(data_dir)
  vocab = read_selected_tags(selected_tags_path(data_dir))  # gs://: its mirrored copy
  stats: dict[str, Any] = {"splits": {}, "categories": {}}
  print(f"{data_dir}: source {info['source']}, {info['num_labels']} labels, "
        f"record schema {info['schema_version']}")
  for name, split_info in info["splits"].items():
    stats["splits"][name] = split_info["num_examples"]
    boxes = split_info.get("num_boxes", 0)
    print(f"  {name:<12} {split_info['num_examples']:>10} examples  "
          f"{len(split_info['shards']):>5} shards" + (f"  {boxes:>10} with a box" if boxes else ""))

  print("tags per category (label occurrences in train):")
  for code in sorted(set(vocab.categories.tolist()), key=lambda c: (c != 9, c != 0, c != 4, c)):
    idx = vocab.category_indices(code)
    occurrences = int(vocab.counts[idx].sum())
    stats["categories"][category_name(code)] = {"tags": len(idx), "occurrences": occurrences}
    print(f"  {category_name(code):<12} {len(idx):>7} tags  {occurrences:>10} occurrences")

  ratings = vocab.category_indices(9)
  if len(ratings):
    print("ratings (train): " + ", ".join(f"{vocab.names[i]} {int(vocab.counts[i])}"
                                          for i in ratings))
  order = [i for i in np.argsort(-vocab.counts, kind="stable") if vocab.categories[i] != 9]
  if order:
    head, tail = order[:top], order[-top:] if len(order) > top else []
    print(f"most frequent tags (of {len(order)}):")
    print("  " + ", ".join(f"{vocab.names[i]} {int(vocab.counts[i])}" for i in head))
    if tail:
      print("least frequent tags:")
      print("  " + ", ".join(f"{vocab.names[i]} {int(vocab.counts[i])}" for i in tail))
    stats["head"] = [vocab.names[i] for i in head]
    stats["tail"] = [vocab.names[i] for i in tail]

  report_path = storage.join(data_dir, REPORT_FILENAME)
  if storage.isfile(report_path):
    report = json.loads(storage.read_text(report_path))
    if report.get("skipped"):
      print("skipped when prepared: " + ", ".join(f"{k} {v}"
                                                  for k, v in report["skipped"].items()))
    if report.get("excluded"):
      print("excluded when prepared: " + ", ".join(f"{k} {v}"
                                                   for k, v in report["excluded"].items()))

  if scan:
    print("labels per split (read from the records):")
    stats["scan"] = {}
    for name in info["splits"]:
      source = _split_source(data_dir, name, info)
      per_category = collections.Counter()
      total = 0
      for i in range(len(source)):
        labels = decode_record(source[i])["labels"]
        total += len(labels)
        per_category.update(category_name(c) for c in vocab.categories[labels])
      mean = total / max(len(source), 1)
      stats["scan"][name] = {"mean_labels": mean, **per_category}
      print(f"  {name:<12} {mean:6.2f} labels/image  " +
            ", ".join(f"{k} {v}" for k, v in per_category.most_common()))

  if samples > 0:
    if split not in info["splits"] or info["splits"][split]["num_examples"] == 0:
      fallback = next(s for s, v in info["splits"].items() if v["num_examples"])
      print(f"split {split!r} is empty or absent; sampling {fallback!r}")
      split = fallback
    source = _split_source(data_dir, split, info)
    indices = sorted(set(np.linspace(0, len(source) - 1, min(samples, len(source)))
                         .round().astype(int).tolist()))
    out = out or f"{os.path.basename(os.path.abspath(data_dir))}_{split}_samples.png"
    render_contact_sheet([decode_record(source[i]) for i in indices], vocab, out)
    stats["sheet"] = out
    print(f"contact sheet of {len(indices)} {split} images: {out}")
  return stats
