"""grain input pipelines: per-process slice -> decode -> (augment) -> fixed-shape batches.

Each process reads only its own disjoint slice of a split (`process_slice`), so the host-local
batches of all processes together form the global batch (assembled on device with
`jax.make_array_from_process_local_data`). Everything is a deterministic function of
(seed, process index, position), so the training iterator's `get_state()` is all a checkpoint
needs to resume the exact stream.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Iterator

import grain
import numpy as np

from sw_zoo.data.augment import augment as augment_image
from sw_zoo.data.augment import preprocess_eval
from sw_zoo.data.dataset_info import read_dataset_info, split_paths
from sw_zoo.data.records import decode_image, decode_record


def process_slice(process_index: int, process_count: int) -> slice:
  """This process's examples: every `process_count`-th one, starting at `process_index`.

  Strided rather than contiguous so each process sees examples from every shard.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")
  return slice(process_index, None, process_count)


def process_slice_indices(num_examples: int, process_index: int,
                          process_count: int) -> np.ndarray:
  """Global example indices read by one process; disjoint across processes, complete together."""
  return np.arange(num_examples)[process_slice(process_index, process_count)]


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                     f"process_count {process_count}")
  return global_batch_size // process_count


def _open_split(data_dir: str, split: str):
  """(dataset info, ArrayRecord source over the split's shards), cross-checked."""
  info = read_dataset_info(data_dir)
  source = grain.sources.ArrayRecordDataSource(split_paths(data_dir, split, info))
  expected = info["splits"][split]["num_examples"]
  if len(source) != expected:
    raise ValueError(f"{os.path.join(data_dir, 'dataset.json')}: splits.{split}.num_examples is "
                     f"{expected} but its shards hold {len(source)} records")
  return info, source


def decode_example(raw: bytes, *, num_labels: int, image_size: int) -> dict[str, Any]:
  """Record bytes -> {'image': uint8 [S, S, 3], 'labels': float32 multi-hot, 'id': int32}.

  Shared by training (before augmentation) and evaluation, so both see identical pixels.
  """
  record = decode_record(raw)
  labels = record["labels"]
  if labels.size and labels[-1] >= num_labels:
    raise ValueError(f"record id {record['id']} has label index {int(labels[-1])} but the "
                     f"dataset has only {num_labels} labels (dataset.json num_labels)")
  try:
    image = preprocess_eval(decode_image(record["image"]), image_size)
  except ValueError as e:
    raise ValueError(f"record id {record['id']} ({record['source'] or 'no source'}): {e}") from e
  multi_hot = np.zeros((num_labels,), np.float32)
  multi_hot[labels] = 1.0
  return {"image": image, "labels": multi_hot, "id": np.int32(record["id"])}


def _augment_example(example: dict[str, Any], rng: np.random.Generator, *,
                     image_size: int) -> dict[str, Any]:
  return {**example, "image": augment_image(example["image"], rng, image_size)}


def _training_view(example: dict[str, Any]) -> dict[str, Any]:
  # Only what the train step consumes; ids would just be shipped to devices for nothing.
  return {"image": example["image"], "labels": example["labels"]}


def make_train_dataset(data_dir: str | os.PathLike, *, split: str = "train",
                       global_batch_size: int, image_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1, augment: bool = True,
                       num_threads: int = 2, prefetch_batches: int = 4) -> grain.IterDataset:
  """Infinite, shuffled (reshuffled every epoch), augmented training batches for one process.

  Yields {'image': uint8 [B, S, S, 3], 'labels': float32 [B, num_labels]} with
  B = global_batch_size // process_count and S = image_size. Iterators support
  `get_state()` / `set_state()` for exact resumption.
  """
  data_dir = os.fspath(data_dir)
  batch_size = _local_batch_size(global_batch_size, process_count)
  info, source = _open_split(data_dir, split)
  # Separate streams for order and augmentation, different per process, derived so that adding a
  # transformation later does not silently change either.
  shuffle_seed, augment_seed = np.random.SeedSequence([seed, process_index]).generate_state(2)

  ds = grain.MapDataset.source(source)[process_slice(process_index, process_count)]
  if len(ds) == 0:
    raise ValueError(f"split {split!r} of {data_dir} has no examples for process "
                     f"{process_index} of {process_count}")
  # shuffle before repeat: grain reseeds the shuffle for every epoch of the repeat.
  ds = ds.shuffle(seed=int(shuffle_seed)).repeat()
  ds = ds.map(functools.partial(decode_example, num_labels=info["num_labels"],
                                image_size=image_size))
  if augment:
    ds = ds.random_map(functools.partial(_augment_example, image_size=image_size),
                       seed=int(augment_seed))
  ds = ds.map(_training_view)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch_batches))


def _eval_example(index: int, *, local: grain.MapDataset, num_labels: int,
                  image_size: int) -> dict[str, Any]:
  if index < len(local):
    example = decode_example(local[index], num_labels=num_labels, image_size=image_size)
    example["mask"] = np.bool_(True)
    return example
  return {"image": np.zeros((image_size, image_size, 3), np.uint8),
          "labels": np.zeros((num_labels,), np.float32),
          "id": np.int32(-1), "mask": np.bool_(False)}


class EvalDataset:
  """Fixed-shape evaluation batches covering this process's slice exactly once.

  Each batch is {'image': uint8 [B, S, S, 3], 'labels': float32 [B, L], 'id': int32 [B],
  'mask': bool [B]}; padded rows have mask False, id -1 and zero labels. Every process yields the
  same number of batches (`len(self)`), even when the split does not divide evenly, so that
  multi-host eval steps stay in lockstep.
  """

  def __init__(self, data_dir: str | os.PathLike, *, split: str, global_batch_size: int,
               image_size: int, process_index: int, process_count: int, num_threads: int,
               prefetch_batches: int):
    data_dir = os.fspath(data_dir)
    self.batch_size = _local_batch_size(global_batch_size, process_count)
    info, source = _open_split(data_dir, split)
    local = grain.MapDataset.source(source)[process_slice(process_index, process_count)]
    self.num_examples = len(local)  # Real examples of this process.
    largest_slice = math.ceil(len(source) / process_count)
    self.num_batches = math.ceil(largest_slice / self.batch_size)
    ds = grain.MapDataset.range(self.num_batches * self.batch_size).map(
        functools.partial(_eval_example, local=local, num_labels=info["num_labels"],
                          image_size=image_size))
    self._dataset = ds.batch(self.batch_size).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches))

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(self._dataset)


def make_eval_dataset(data_dir: str | os.PathLike, *, split: str = "validation",
                      global_batch_size: int, image_size: int, process_index: int = 0,
                      process_count: int = 1, num_threads: int = 2,
                      prefetch_batches: int = 4) -> EvalDataset:
  """Deterministic, unaugmented batches (decode + `preprocess_eval`) with a padding mask."""
  return EvalDataset(data_dir, split=split, global_batch_size=global_batch_size,
                     image_size=image_size, process_index=process_index,
                     process_count=process_count, num_threads=num_threads,
                     prefetch_batches=prefetch_batches)
