"""Dropping tags that ended up with no training image.

The vocabulary is chosen in pass 1 from metadata, before any image is opened. A tag whose only
training images turn out unreadable in pass 2 would stay in the vocabulary with count 0: a class
the model can never learn, whose metrics are undefined. Once pass 2 has counted the labels that
were actually written, such tags (ratings excepted: the four WD ratings are a fixed block) are
removed, and the label indices of the shards that hold any index at or above the first removed
one are rewritten.

Crash safety: a shard is rewritten into a `.tmp` file, its progress record then names the
sha256 of the rewritten file, and only then is the file renamed into place. A rerun trusts a
record that names a hash only if the file has it; otherwise the shard is converted again from
the source (with the original indices) and remapped again, so no shard is ever remapped twice.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from array_record.python import array_record_module

from data_prep import resume
from data_prep.report import Written
from sw_zoo.data.file_hash import sha256_file
from sw_zoo.data.records import decode_record, encode_record
from sw_zoo.data.shard_writer import ARRAY_RECORD_OPTIONS
from sw_zoo.data.vocab import CATEGORY_RATING, TagVocab

log = logging.getLogger(__name__)


def unused_tags(vocab: TagVocab) -> list[int]:
  """Indices of the non-rating tags with a training count of 0."""
  return [i for i, t in enumerate(vocab) if t.category != CATEGORY_RATING and t.count == 0]


def _rewrite(path: str, old_to_new: np.ndarray, first: int) -> tuple[str, int] | None:
  """Writes `path`'s records with remapped labels to a `.tmp` file; -> (tmp path, records left
  without any label), or None when no record holds an index that moves."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    raw = reader.read_all()
  finally:
    reader.close()
  decoded = [decode_record(r) for r in raw]
  if not any(len(r["labels"]) and int(r["labels"].max()) >= first for r in decoded):
    return None
  tmp = f"{path}.remap.tmp"
  writer = array_record_module.ArrayRecordWriter(tmp, ARRAY_RECORD_OPTIONS)
  emptied = 0
  try:
    for r in decoded:
      labels = old_to_new[r["labels"]]
      labels = labels[labels >= 0]
      emptied += len(labels) == 0 and len(r["labels"]) > 0
      dropped = old_to_new[r["dropped"]]
      writer.write(encode_record({**r, "labels": labels, "dropped": dropped[dropped >= 0]}))
  except BaseException:
    writer.close()
    os.remove(tmp)
    raise
  writer.close()
  return tmp, emptied


def drop_unused_tags(out_dir: str, progress_dir: str, plan_shards: dict[str, int],
                     written: Written) -> tuple[Written, dict]:
  """Removes `unused_tags` from the vocabulary and the shards (see the module docstring);
  -> (Written with the smaller vocabulary, {"dropped_unused": [names], "emptied_records": n})."""
  vocab = written.vocab
  dropped = unused_tags(vocab)
  if not dropped:
    return written, {"dropped_unused": [], "emptied_records": 0}
  old_to_new = np.full(len(vocab), -1, np.int64)
  keep = [i for i in range(len(vocab)) if i not in set(dropped)]
  old_to_new[keep] = np.arange(len(keep))
  first = min(dropped)
  emptied = 0
  for split, num_shards in plan_shards.items():
    for index in range(num_shards):
      record = resume.read_record(progress_dir, out_dir, split, index)
      if record is None:
        raise RuntimeError(f"shard {index} of split {split!r} is missing after the run")
      if not record["shard"] or "remapped_sha256" in record:
        continue  # Empty, or already remapped (and verified) by an interrupted earlier run.
      path = os.path.join(out_dir, record["shard"])
      result = _rewrite(path, old_to_new, first)
      if result is None:
        continue
      tmp, emptied_here = result
      emptied += emptied_here
      # Record first, rename second: see the module docstring.
      resume.write_record(progress_dir, {**record, "bytes": os.path.getsize(tmp),
                                         "remapped_sha256": sha256_file(tmp)})
      os.replace(tmp, path)
  names = [vocab.names[i] for i in dropped]
  log.warning("dropped %d tag(s) whose training images were all unreadable: %s%s", len(names),
              ", ".join(names[:20]), " ..." if len(names) > 20 else "")
  if emptied:
    log.warning("%d record(s) had only dropped tags and now carry no label", emptied)
  smaller = TagVocab([vocab[i] for i in keep])
  return (Written(written.splits, written.skipped, smaller),
          {"dropped_unused": names, "emptied_records": emptied})
