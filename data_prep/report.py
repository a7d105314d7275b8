"""report.json, a conversion's account of itself: what was written, what was skipped (bad input,
each item listed with its path) or excluded by design (only counted), and how tags were mapped;
plus the summary printed at the end of a run."""

from __future__ import annotations

import collections
import os
import time
from typing import Any, NamedTuple

from data_prep.scan import Scan
from data_prep.splits import EXCLUSION_REASONS
from sw_zoo.data.vocab import CATEGORY_NAMES, TagVocab

REPORT_FILENAME = "report.json"


class Written(NamedTuple):
  """What the per-shard progress records say a run wrote."""
  splits: dict  # {split: {"num_examples": n, "shards": [file, ...]}}
  skipped: list  # Items skipped while writing, in source order.
  vocab: TagVocab  # The vocabulary, counted over the written training records.


def _vocab_summary(vocab: TagVocab) -> dict[str, int]:
  summary = collections.Counter(CATEGORY_NAMES.get(int(c), str(int(c))) for c in vocab.categories)
  return dict(summary)


def build_report(out_dir: str, source_kind: str, scanned: Scan, written: Written, resumed: int,
                 start: float) -> dict[str, Any]:
  """The report of a finished run; `start` is its `time.perf_counter()` at the beginning."""
  skipped_items = list(scanned.rejected) + written.skipped
  skipped = collections.Counter(e["reason"] for e in skipped_items)
  excluded = {r: scanned.rejected_counts[r] for r in EXCLUSION_REASONS
              if scanned.rejected_counts[r]}
  elapsed = time.perf_counter() - start
  vocab = written.vocab
  return {
      "out_dir": out_dir, "source": source_kind,
      "written": {s: v["num_examples"] for s, v in written.splits.items()},
      "boxes": {s: v.get("num_boxes", 0) for s, v in written.splits.items()},
      "skipped": dict(sorted(skipped.items())), "excluded": excluded,
      "num_labels": len(vocab), "vocab": _vocab_summary(vocab),
      "shards": {s: len(v["shards"]) for s, v in written.splits.items()},
      "resumed_shards": resumed, "elapsed_s": round(elapsed, 2),
      "tags": {**scanned.tag_stats.as_dict(),
               "not_selected": sum(c for n, c in scanned.counts.items() if n not in vocab),
               "unknown_ratings": dict(scanned.unknown_ratings)},
      "skipped_items": skipped_items,
  }


def orphan_entry(orphans: list[dict[str, str]], *, show: int = 1000) -> dict[str, Any]:
  """report.json's `orphan_captions`: the count and the first `show` files with their hints."""
  return {"count": len(orphans), "examples": orphans[:show]}


def print_summary(out_dir: str, report: dict) -> None:
  """A few lines on stdout: counts written, skipped and excluded, and where the details are."""
  written = ", ".join(f"{s} {n}" for s, n in report["written"].items())
  print(f"prepared {out_dir}: {written} images; {report['num_labels']} tags "
        f"{report['vocab']}")
  boxes = report.get("boxes") or {}
  if any(boxes.values()):
    print("with a box: " + ", ".join(f"{s} {n}" for s, n in boxes.items()))
  if report["skipped"]:
    print(f"skipped {sum(report['skipped'].values())} bad items: " +
          ", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items())))
  if report["excluded"]:
    print("excluded by design: " +
          ", ".join(f"{k} {v}" for k, v in sorted(report["excluded"].items())))
  orphans = report.get("orphan_captions")
  if orphans:
    first = orphans["examples"][0]
    print(f"{orphans['count']} tag files have no image next to them, so their tags were not used "
          f"(e.g. {first['path']}: {first['hint']}); all listed in report.json")
  dropped = report["tags"].get("dropped_unused")
  if dropped:
    print(f"dropped {len(dropped)} tags whose training images were all unreadable: "
          + ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
  unknown = report["tags"]["unknown"]["occurrences"]
  if unknown:
    print(f"unknown tags: {unknown} occurrences of {report['tags']['unknown']['distinct']} "
          "names (dropped)")
  print(f"details: {os.path.join(out_dir, REPORT_FILENAME)}")
