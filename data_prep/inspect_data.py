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
import math
import os
from typing import Any

import grain
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from data_prep.convert import REPORT_FILENAME
from sw_zoo.data.dataset_info import SELECTED_TAGS_FILENAME, read_dataset_info, split_paths
from sw_zoo.data.records import decode_image, decode_record
from sw_zoo.data.vocab import CATEGORY_NAMES, TagVocab, read_selected_tags

CELL = 224          # Thumbnail side in the contact sheet.
TEXT_LINES = 7      # Lines of tags under each thumbnail.
LINE_HEIGHT = 13


def _category_name(code: int) -> str:
  return CATEGORY_NAMES.get(int(code), str(int(code)))


def _split_source(data_dir: str, split: str, info: dict):
  return grain.sources.ArrayRecordDataSource(split_paths(data_dir, split, info))


def _wrap(draw: ImageDraw.ImageDraw, words: list[str], font, width: int,
          max_lines: int) -> list[str]:
  lines, line = [], ""
  for word in words:
    candidate = f"{line} {word}".strip()
    if line and draw.textlength(candidate, font=font) > width:
      lines.append(line)
      line = word
      if len(lines) == max_lines:
        break
    else:
      line = candidate
  if len(lines) < max_lines and line:
    lines.append(line)
  return lines


def render_contact_sheet(records: list[dict], vocab: TagVocab, out_path: str) -> None:
  """Decoded record images with their tags, in a grid; written as PNG."""
  columns = max(1, math.ceil(math.sqrt(len(records))))
  rows = max(1, math.ceil(len(records) / columns))
  cell_h = CELL + TEXT_LINES * LINE_HEIGHT + 6
  sheet = Image.new("RGB", (columns * CELL, rows * cell_h), "white")
  draw = ImageDraw.Draw(sheet)
  font = ImageFont.load_default()
  for n, record in enumerate(records):
    x, y = (n % columns) * CELL, (n // columns) * cell_h
    thumb = ImageOps.contain(Image.fromarray(decode_image(record["image"])), (CELL - 4, CELL - 4),
                             Image.Resampling.LANCZOS)
    sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2))
    labels = sorted(record["labels"].tolist(),
                    key=lambda i: (vocab.categories[i] != 9, -int(vocab.counts[i]), i))
    names = [vocab.names[i] for i in labels]
    words = [f"#{record['id']}:"] + [n + "," for n in names[:-1]] + names[-1:]
    for k, line in enumerate(_wrap(draw, words, font, CELL - 6, TEXT_LINES)):
      draw.text((x + 3, y + CELL + 2 + k * LINE_HEIGHT), line, fill="black", font=font)
    draw.rectangle((x, y, x + CELL - 1, y + cell_h - 1), outline=(200, 200, 200))
  sheet.save(out_path, format="PNG")


def inspect(data_dir: str | os.PathLike, *, samples: int = 16, out: str | None = None,
            split: str = "validation", top: int = 20, scan: bool = False) -> dict[str, Any]:
  """Prints the summary; writes the contact sheet to `out` when samples > 0. Returns the stats."""
  data_dir = os.fspath(data_dir)
  info = read_dataset_info(data_dir)
  vocab = read_selected_tags(os.path.join(data_dir, SELECTED_TAGS_FILENAME))
  stats: dict[str, Any] = {"splits": {}, "categories": {}}
  print(f"{data_dir}: source {info['source']}, {info['num_labels']} labels, "
        f"record schema {info['schema_version']}")
  for name, split_info in info["splits"].items():
    stats["splits"][name] = split_info["num_examples"]
    print(f"  {name:<12} {split_info['num_examples']:>10} examples  "
          f"{len(split_info['shards']):>5} shards")

  print("tags per category (label occurrences in train):")
  for code in sorted(set(vocab.categories.tolist()), key=lambda c: (c != 9, c != 0, c != 4, c)):
    idx = vocab.category_indices(code)
    occurrences = int(vocab.counts[idx].sum())
    stats["categories"][_category_name(code)] = {"tags": len(idx), "occurrences": occurrences}
    print(f"  {_category_name(code):<12} {len(idx):>7} tags  {occurrences:>10} occurrences")

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

  report_path = os.path.join(data_dir, REPORT_FILENAME)
  if os.path.isfile(report_path):
    with open(report_path, encoding="utf-8") as f:
      report = json.load(f)
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
        per_category.update(_category_name(c) for c in vocab.categories[labels])
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
