"""The built-in synthetic booru-like dataset: shapes on backgrounds, tagged Danbooru style.

    python -m data_prep.synthetic --out data/synthetic

Each image shows 1-6 objects (plain shapes, or rarely a composite "character" motif such as a
smiley face or a house) on a plain or textured background. Tags cover several categories with
long-tailed frequencies, like a real booru: shapes, object colours, object sizes, object count
(`1object` .. `6objects`, like `1girl`/`2girls`), vertical position, background, a few
miscellaneous features, rare characters (category 4) and exactly one of the four WD rating tags
(category 9), which is a deterministic function of visible content so that it can be learned.

Every tag is visible and survives the training augmentation; see data_prep/synthetic_scene.py,
which draws the images. This module numbers the tags, writes examples and drives the workers.

Determinism: example `i` of split `s` is drawn from `np.random.default_rng([seed, s, i])`
(missing-label simulation from `[seed, s, i, 1]`), so output bytes do not depend on the number
of worker processes. Shards are written first; `dataset.json` last and atomically, so its
presence marks a complete dataset.

Output directory (`check_output`): the generator writes only into a directory that is absent,
empty, or holds its own output: a dataset.json written by this generator, or the
`.sw_zoo_synthetic` marker (its arguments, as JSON) that it writes before anything else and
removes once dataset.json is in place, so that an interrupted generation can be rerun. Anything
else (a prepared dataset, an interrupted `prepare`'s shards, unrelated files) is refused unless
forced: the trainer generates into config.data.dir on its own, which must not cost a user their
shards.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import multiprocessing
import os
import sys
import time
from typing import Any, Iterator, NamedTuple

import numpy as np
from PIL import Image

from data_prep.synthetic_scene import (CHARACTER_TAGS, GENERAL_TAGS, RATING_TAGS, rating_of,
                                       render_scene)
from sw_zoo import progress, storage
from sw_zoo.data.atomic_file import atomic_write_text, check_output_dir
from sw_zoo.data.dataset_info import (DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME,
                                      read_dataset_info, write_dataset_info)
from sw_zoo.data.records import encode_record
from sw_zoo.data.shard_writer import SHARD_SUFFIX, ShardWriter
from sw_zoo.data.vocab import (CATEGORY_CHARACTER, CATEGORY_GENERAL, CATEGORY_RATING, Tag,
                               TagVocab, write_selected_tags)

log = logging.getLogger(__name__)

GENERATOR_NAME = "data_prep.synthetic"
# Bump whenever rendering or tagging changes, so an old dataset is never silently reused.
GENERATOR_VERSION = 1
SPLITS = ("train", "validation")  # Position in this tuple is the split id fed to the RNG.
# Validation ids are offset so ids are unique across splits and independent of --num-train.
_SPLIT_ID_OFFSET = 1_000_000_000
# Written first, removed last: says "a synthetic generation is in progress here" (see above).
MARKER_FILENAME = ".sw_zoo_synthetic"


def tag_vocab(counts: dict[str, int] | None = None) -> TagVocab:
  """The synthetic vocabulary in WD order: ratings, general, characters."""
  counts = counts or {}
  groups = ((RATING_TAGS, CATEGORY_RATING), (GENERAL_TAGS, CATEGORY_GENERAL),
            (CHARACTER_TAGS, CATEGORY_CHARACTER))
  names = [(name, category) for tags, category in groups for name in tags]
  return TagVocab([Tag(name=name, category=category, count=counts.get(name, 0), tag_id=i)
                   for i, (name, category) in enumerate(names)])


_VOCAB = tag_vocab()
_NUM_RATINGS = len(RATING_TAGS)


class _Config(NamedTuple):
  seed: int
  image_size: int
  drop_tag_fraction: float


_worker_config: _Config | None = None


def _init_worker(config: _Config) -> None:
  global _worker_config
  _worker_config = config


def make_example(seed: int, split_id: int, index: int, image_size: int,
                 drop_tag_fraction: float = 0.0) -> dict[str, Any]:
  """One example as a record dict (see sw_zoo.data.records). Pure function of its arguments."""
  scene = render_scene(np.random.default_rng([seed, split_id, index]), image_size)
  names = scene.tags | {rating_of(scene)}
  labels = np.array(sorted(_VOCAB.index(n) for n in names), dtype=np.int32)
  dropped = np.zeros((0,), np.int32)
  if drop_tag_fraction > 0 and SPLITS[split_id] == "train":
    # Simulated missing labels: any non-rating tag may be forgotten by the "tagger".
    drop_rng = np.random.default_rng([seed, split_id, index, 1])
    droppable = labels >= _NUM_RATINGS
    drop = droppable & (drop_rng.random(labels.shape) < drop_tag_fraction)
    labels, dropped = labels[~drop], labels[drop]
  buffer = io.BytesIO()
  Image.fromarray(scene.image).save(buffer, format="JPEG", quality=95)
  return {"id": split_id * _SPLIT_ID_OFFSET + index, "image": buffer.getvalue(),
          "labels": labels, "dropped": dropped, "source": f"synthetic/{SPLITS[split_id]}/{index}"}


def _encoded_example(task: tuple[int, int]) -> tuple[bytes, np.ndarray]:
  split_id, index = task
  c = _worker_config
  example = make_example(c.seed, split_id, index, c.image_size, c.drop_tag_fraction)
  return encode_record(example), example["labels"]


def _generator_args(num_train, num_val, image_size, seed, drop_tag_fraction, shard_size):
  return {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "num_train": num_train,
          "num_val": num_val, "image_size": image_size, "seed": seed,
          "drop_tag_fraction": drop_tag_fraction, "shard_size": shard_size}


def is_synthetic_output(path: str) -> bool:
  """Whether `path` holds this generator's output: a dataset.json it wrote, or its marker."""
  if os.path.isfile(os.path.join(path, MARKER_FILENAME)):
    return True
  try:
    with open(os.path.join(path, DATASET_INFO_FILENAME), encoding="utf-8") as f:
      generator = json.load(f).get("generator")
  except (OSError, ValueError, AttributeError):
    return False
  return isinstance(generator, dict) and generator.get("name") == GENERATOR_NAME


def check_output(out_dir: str | os.PathLike, force: bool = False) -> None:
  """OutputRefused unless the synthetic set may be written into `out_dir` (module docstring)."""
  check_output_dir(out_dir, is_own=is_synthetic_output, what="a synthetic dataset", force=force)


def _reuse_existing(out_dir: str, args: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
  """The info of a complete dataset made with `args` in `out_dir` (nothing to do), else None. A
  complete dataset made otherwise is un-marked when `overwrite`, otherwise FileExistsError."""
  info_path = os.path.join(out_dir, DATASET_INFO_FILENAME)
  if not os.path.exists(info_path):
    return None
  try:
    existing = read_dataset_info(out_dir)
    problem = f"a dataset made with {existing.get('generator')}, not {args}"
  except (ValueError, FileNotFoundError) as e:
    existing, problem = None, f"an invalid dataset ({e})"
  if existing is not None and existing.get("generator") == args:
    log.info("%s already holds a complete synthetic dataset with these arguments; "
             "nothing to do", out_dir)
    return existing
  if not overwrite:
    raise FileExistsError(f"{out_dir} already holds {problem}; pass overwrite=True "
                          "(--overwrite) or choose another directory")
  # Un-mark the directory first: from here until the new dataset.json it is incomplete.
  os.remove(info_path)
  return None


def _write_splits(out_dir: str, config: _Config, sizes: dict[str, int], shard_size: int,
                  workers: int, show_progress: bool) -> tuple[dict, np.ndarray]:
  """Renders and writes every split's shards; -> (dataset.json "splits", train tag counts)."""
  counts = np.zeros(len(_VOCAB), np.int64)
  splits_info = {}

  def tasks(split_id: int) -> Iterator[tuple[int, int]]:
    return ((split_id, i) for i in range(sizes[SPLITS[split_id]]))

  pool = None
  if workers > 1:
    # spawn, not fork: the trainer calls this from a process that has JAX's threads running.
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (config,))
  else:
    _init_worker(config)
  try:
    with progress.bar(sum(sizes.values()), "synthetic", unit="img", enabled=show_progress) as bar:
      for split_id, split in enumerate(SPLITS):
        if pool is not None:
          results = pool.imap(_encoded_example, tasks(split_id), chunksize=32)
        else:
          results = map(_encoded_example, tasks(split_id))
        with ShardWriter(out_dir, split, shard_size) as writer:
          for raw, labels in results:
            writer.write(raw)
            if split == "train":
              counts[labels] += 1
            bar.update(1)
        splits_info[split] = {"num_examples": sizes[split], "shards": writer.filenames,
                              "shard_examples": writer.shard_examples}
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
  return splits_info, counts


def generate(out_dir: str | os.PathLike, *, num_train: int = 10_000, num_val: int = 1_000,
             image_size: int = 128, seed: int = 0, drop_tag_fraction: float = 0.0,
             shard_size: int = 2_000, workers: int | None = None, overwrite: bool = False,
             force: bool = False, progress: bool = True) -> dict[str, Any]:
  """Generates the synthetic dataset into `out_dir` and returns its dataset.json contents.

  `out_dir` must be absent, empty or hold this generator's (possibly partial) output; any other
  directory is refused (OutputRefused, nothing written) unless `force=True`. A no-op (returning
  the existing info) when `out_dir` already holds a complete dataset made with the same
  arguments. A complete dataset made with other arguments is replaced only with
  `overwrite=True`; otherwise FileExistsError. `workers` defaults to the CPU count; 1 (or 0)
  generates in this process. Output bytes do not depend on `workers`.
  """
  out_dir = os.fspath(out_dir)
  if num_train < 1 or num_val < 0:
    raise ValueError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got {seed}")
  if image_size < 16:
    raise ValueError(f"image_size must be at least 16, got {image_size}")
  if not 0.0 <= drop_tag_fraction < 1.0:
    raise ValueError(f"drop_tag_fraction must be in [0, 1), got {drop_tag_fraction}")
  if shard_size < 1:
    raise ValueError(f"shard_size must be positive, got {shard_size}")
  args = _generator_args(num_train, num_val, image_size, seed, float(drop_tag_fraction),
                         shard_size)
  check_output(out_dir, force=force)
  if storage.is_remote(out_dir):
    # gs://: generated in the bucket's local mirror, uploaded with dataset.json last.
    with storage.output_dir(out_dir, last=[DATASET_INFO_FILENAME], owned=_is_synthetic_file) as local:
      return _generate(local, args, overwrite=overwrite, workers=workers, progress=progress)
  return _generate(out_dir, args, overwrite=overwrite, workers=workers, progress=progress)


def _is_synthetic_file(rel: str) -> bool:
  return rel.endswith(SHARD_SUFFIX) or rel in (DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME, MARKER_FILENAME)


def _generate(out_dir: str, args: dict[str, Any], *, overwrite: bool, workers: int | None,
              progress: bool) -> dict[str, Any]:
  num_train, num_val = args["num_train"], args["num_val"]
  image_size, seed, drop_tag_fraction, shard_size = (args["image_size"], args["seed"], args["drop_tag_fraction"],
                                                     args["shard_size"])
  existing = _reuse_existing(out_dir, args, overwrite)
  if existing is not None:
    return existing
  os.makedirs(out_dir, exist_ok=True)
  atomic_write_text(os.path.join(out_dir, MARKER_FILENAME), json.dumps(args) + "\n")
  for leftover in glob.glob(os.path.join(out_dir, "*.array_record.tmp")):
    os.remove(leftover)

  workers = (os.cpu_count() or 1) if workers is None else workers
  start = time.perf_counter()
  splits_info, counts = _write_splits(out_dir, _Config(seed, image_size, float(drop_tag_fraction)),
                                      {"train": num_train, "validation": num_val}, shard_size,
                                      workers, show_progress=progress)
  write_selected_tags(os.path.join(out_dir, SELECTED_TAGS_FILENAME),
                      tag_vocab(dict(zip(_VOCAB.names, counts.tolist()))))
  info = write_dataset_info(out_dir, {
      "schema_version": 1, "source": "synthetic", "image_size": image_size,
      "num_labels": len(_VOCAB), "splits": splits_info, "generator": args})
  # Shards of a replaced or interrupted earlier dataset (other shard counts) would only confuse.
  keep = {name for split in splits_info.values() for name in split["shards"]}
  for split in SPLITS:
    for path in glob.glob(os.path.join(out_dir, f"{split}-*-of-*.array_record")):
      if os.path.basename(path) not in keep:
        os.remove(path)
  os.remove(os.path.join(out_dir, MARKER_FILENAME))  # dataset.json now says whose this is.
  log.info("wrote %d train + %d validation images to %s in %.1f s", num_train, num_val,
           out_dir, time.perf_counter() - start)
  return info


if __name__ == "__main__":
  # `python -m data_prep.synthetic`: the documented entry point; the command lives in the CLI.
  from sw_zoo.cli import commands

  sys.exit(commands.main(["synthetic", *sys.argv[1:]]))
