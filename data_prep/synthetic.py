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

With `box=True` (`--box`, `config.data.synthetic.box`) each record also carries the box of the
image's largest object (`synthetic_scene.largest_object_box`, exact to the painted pixels) and
dataset.json counts them per split (`num_boxes`); images and labels are the same as without it.
Off by default, so default datasets are byte-for-byte what they were.

Label noise, on TRAIN labels only (validation stays clean, so it measures the truth); the true
tags a train image lost are in its record's `dropped` field:
- `drop_tag_fraction` (`--drop-tag-fraction`): each non-rating tag is forgotten independently
  with this probability (missing labels).
- `correlated_noise` (`--correlated-noise`, `config.data.synthetic.correlated_noise`): a careless
  annotator (data_prep/synthetic_noise.py) misses whole objects, about this fraction of them and
  more often small, low-contrast ones and those on busy backgrounds, dropping together every tag
  only that object justifies and lowering the count tag, and misreads colours as a neighbouring
  colour. Correlated and input-dependent, as the heteroscedastic head (model.heads) assumes. The
  wrong tags it adds (the neighbour colour, the lower count) stand in `labels` and are recorded
  nowhere in the record (regenerate with the option off for clean labels); dataset.json counts
  them under the train split's `label_noise`, with the missed objects and dropped tags.
Both off (0.0) by default, leaving the output byte-for-byte unchanged; with both on, the
annotator's tags are made first and `drop_tag_fraction` forgets some of those.

Determinism: example `i` of split `s` is drawn from `np.random.default_rng([seed, s, i])`
(missing-label simulation from `[seed, s, i, 1]`, the annotator from `[seed, s, i, 2]`), so
output bytes do not depend on the number of worker processes. Shards are written first;
`dataset.json` last and atomically, so its presence marks a complete dataset.

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

from data_prep.synthetic_noise import annotate
from data_prep.synthetic_scene import (CHARACTER_TAGS, GENERAL_TAGS, RATING_TAGS,
                                       largest_object_box, rating_of, render_scene)
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
  box: bool = False
  correlated_noise: float = 0.0


_worker_config: _Config | None = None


def _init_worker(config: _Config) -> None:
  global _worker_config
  _worker_config = config


def _indices(names: set[str]) -> np.ndarray:
  return np.array(sorted(_VOCAB.index(n) for n in names), dtype=np.int32)


def make_example(seed: int, split_id: int, index: int, image_size: int,
                 drop_tag_fraction: float = 0.0, box: bool = False,
                 correlated_noise: float = 0.0) -> dict[str, Any]:
  """One example as a record dict (see sw_zoo.data.records). Pure function of its arguments.
  `box`: add the largest object's box (None for an image without objects). The two noise
  options change train labels only (module docstring)."""
  return _make_example(seed, split_id, index, image_size, drop_tag_fraction, box,
                       correlated_noise)[0]


class _NoiseCounts(NamedTuple):
  """One train image's share of dataset.json's `label_noise` (correlated_noise on)."""
  objects: int
  missed_objects: int
  confused_colors: int
  true_tags: int  # non-rating tags, as are the next two
  dropped_tags: int
  added_tags: int


def _make_example(seed, split_id, index, image_size, drop_tag_fraction, box, correlated_noise
                  ) -> tuple[dict[str, Any], _NoiseCounts | None]:
  scene = render_scene(np.random.default_rng([seed, split_id, index]), image_size)
  rating = rating_of(scene)
  labels = true_labels = _indices(scene.tags | {rating})
  dropped = np.zeros((0,), np.int32)
  train = SPLITS[split_id] == "train"
  annotation = None
  if correlated_noise > 0 and train:
    # A careless annotator: whole objects missed, colours misread (data_prep/synthetic_noise.py).
    annotation = annotate(scene, np.random.default_rng([seed, split_id, index, 2]),
                          correlated_noise)
    labels = _indices(annotation.tags | {rating})
  if drop_tag_fraction > 0 and train:
    # Simulated missing labels: any non-rating tag may be forgotten by the "tagger".
    drop_rng = np.random.default_rng([seed, split_id, index, 1])
    droppable = labels >= _NUM_RATINGS
    drop = droppable & (drop_rng.random(labels.shape) < drop_tag_fraction)
    labels = labels[~drop]
  if labels is not true_labels:
    dropped = np.setdiff1d(true_labels, labels).astype(np.int32)  # true tags only, sorted
  counts = None
  if annotation is not None:
    counts = _NoiseCounts(len(scene.placed), len(annotation.missed), len(annotation.confused),
                          int(np.sum(true_labels >= _NUM_RATINGS)), len(dropped),
                          len(np.setdiff1d(labels, true_labels)))
  buffer = io.BytesIO()
  Image.fromarray(scene.image).save(buffer, format="JPEG", quality=95)
  example = {"id": split_id * _SPLIT_ID_OFFSET + index, "image": buffer.getvalue(),
             "labels": labels, "dropped": dropped,
             "source": f"synthetic/{SPLITS[split_id]}/{index}"}
  if box:  # (The scene draws no random numbers for it: images and labels do not change.)
    example["box"] = largest_object_box(scene)
  return example, counts


def _encoded_example(task: tuple[int, int]) -> tuple[bytes, np.ndarray, bool, _NoiseCounts | None]:
  split_id, index = task
  c = _worker_config
  example, counts = _make_example(c.seed, split_id, index, c.image_size, c.drop_tag_fraction,
                                  c.box, c.correlated_noise)
  return encode_record(example), example["labels"], example.get("box") is not None, counts


def _generator_args(num_train, num_val, image_size, seed, drop_tag_fraction, shard_size,
                    box=False, correlated_noise=0.0):
  args = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "num_train": num_train,
          "num_val": num_val, "image_size": image_size, "seed": seed,
          "drop_tag_fraction": drop_tag_fraction, "shard_size": shard_size}
  # Optional keys only when set, so datasets made before they existed are still current.
  if box:
    args["box"] = True
  if correlated_noise > 0:
    args["correlated_noise"] = correlated_noise
  return args


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
        num_boxes = 0
        noise = np.zeros(len(_NoiseCounts._fields), np.int64)
        with ShardWriter(out_dir, split, shard_size) as writer:
          for raw, labels, has_box, noise_counts in results:
            writer.write(raw)
            num_boxes += has_box
            if split == "train":
              counts[labels] += 1
            if noise_counts is not None:
              noise += noise_counts
            bar.update(1)
        splits_info[split] = {"num_examples": sizes[split], "shards": writer.filenames,
                              "shard_examples": writer.shard_examples}
        if config.box:
          splits_info[split]["num_boxes"] = num_boxes
        if config.correlated_noise > 0 and split == "train":
          splits_info[split]["label_noise"] = dict(zip(_NoiseCounts._fields, noise.tolist()))
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
  return splits_info, counts


def generate(out_dir: str | os.PathLike, *, num_train: int = 10_000, num_val: int = 1_000,
             image_size: int = 128, seed: int = 0, drop_tag_fraction: float = 0.0,
             shard_size: int = 2_000, workers: int | None = None, overwrite: bool = False,
             force: bool = False, progress: bool = True, box: bool = False,
             correlated_noise: float = 0.0) -> dict[str, Any]:
  """Generates the synthetic dataset into `out_dir` and returns its dataset.json contents.

  `out_dir` must be absent, empty or hold this generator's (possibly partial) output; any other
  directory is refused (OutputRefused, nothing written) unless `force=True`. A no-op (returning
  the existing info) when `out_dir` already holds a complete dataset made with the same
  arguments. A complete dataset made with other arguments is replaced only with
  `overwrite=True`; otherwise FileExistsError. `workers` defaults to the CPU count; 1 (or 0)
  generates in this process. Output bytes do not depend on `workers`. `box=True` adds each
  image's largest-object box to its record; `drop_tag_fraction` and `correlated_noise` corrupt
  train labels (module docstring).
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
  if not isinstance(box, (bool, np.bool_)):
    raise ValueError(f"box must be True or False, got {box!r}")
  if isinstance(correlated_noise, bool) or not 0.0 <= correlated_noise < 1.0:
    raise ValueError(f"correlated_noise must be a probability in [0, 1), got {correlated_noise!r}")
  args = _generator_args(num_train, num_val, image_size, seed, float(drop_tag_fraction),
                         shard_size, bool(box), float(correlated_noise))
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
  config = _Config(seed, image_size, float(drop_tag_fraction), bool(args.get("box", False)),
                   float(args.get("correlated_noise", 0.0)))
  splits_info, counts = _write_splits(out_dir, config,
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
