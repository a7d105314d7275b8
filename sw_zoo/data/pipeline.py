"""grain input pipelines: per-process slice -> decode -> (augment) -> fixed-shape batches.

Training: slice -> shuffle per epoch (or balanced sampling, `balance`, or a schedule of both,
`sampling`) -> decode ->
`augment.make_augmenter(spec)` -> batch. Evaluation: slice -> decode -> `preprocess_eval` -> batch.

Each process reads only its own disjoint, contiguous slice of a split (`process_slice`), so the
host-local
batches of all processes together form the global batch (assembled on device with
`jax.make_array_from_process_local_data`). Everything is a deterministic function of
(seed, process index, position), so the training iterator's `get_state()` is all a checkpoint
needs to resume the exact stream.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Iterator

import grain
import numpy as np
from absl import flags as absl_flags

from sw_zoo.data import augment as augment_lib
from sw_zoo import storage
from sw_zoo.data import balance
from sw_zoo.data import remote_dataset
from sw_zoo.data import sampling
from sw_zoo.data.preprocess import box_after_letterbox, preprocess_eval
from sw_zoo.data.dataset_info import read_dataset_info, split_paths
from sw_zoo.data.records import decode_image, decode_record


def process_slice(num_examples: int, process_index: int, process_count: int) -> slice:
  """This process's examples: a contiguous block, block sizes differing by at most one.

  Contiguous (not strided) so that a host touches only the shards holding its block: on a pod
  reading gs:// each host stages just those (`data.remote_dataset`), 1/process_count of the data.
  The global batch is the union of the hosts' batches, so it still mixes the whole split.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")
  return slice(num_examples * process_index // process_count,
               num_examples * (process_index + 1) // process_count)


def process_slice_indices(num_examples: int, process_index: int,
                          process_count: int) -> np.ndarray:
  """Global example indices read by one process; disjoint across processes, complete together."""
  return np.arange(num_examples)[process_slice(num_examples, process_index, process_count)]


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                     f"process_count {process_count}")
  return global_batch_size // process_count


def _open_split(data_dir: str, split: str, process_index: int = 0,
                process_count: int = 1) -> tuple[dict[str, Any], grain.MapDataset, int]:
  """(dataset info, this process's examples of the split, the split's size), cross-checked.

  Only the shards holding the process's block are opened (for a gs:// dataset: staged), so the
  source spans a window of the split starting at global example `first`.
  """
  info = read_dataset_info(data_dir)
  if split not in info["splits"]:
    split_paths(data_dir, split, info)  # raises the KeyError naming the splits there are
  split_info = info["splits"][split]
  total = split_info["num_examples"]
  block = process_slice(total, process_index, process_count)
  shards, first = remote_dataset.block_shards(split_info, block.start, block.stop)
  source = grain.sources.ArrayRecordDataSource(split_paths(data_dir, split, info, shards))
  counts = split_info.get("shard_examples")
  expected = total if counts is None else sum(counts[i] for i in shards)
  if len(source) != expected:
    raise ValueError(f"{storage.join(data_dir, 'dataset.json')}: splits.{split} says its shards hold "
                     f"{expected} records here but they hold {len(source)}")
  local = grain.MapDataset.source(source)[block.start - first:block.stop - first]
  return info, local, total


def _labels_multi_hot(record: dict[str, Any], num_labels: int) -> np.ndarray:
  labels = record["labels"]
  if labels.size and labels[-1] >= num_labels:
    raise ValueError(f"record id {record['id']} has label index {int(labels[-1])} but the "
                     f"dataset has only {num_labels} labels (dataset.json num_labels)")
  multi_hot = np.zeros((num_labels,), np.float32)
  multi_hot[labels] = 1.0
  return multi_hot


def _decode_pixels(record: dict[str, Any], prepare: Callable[[np.ndarray], np.ndarray],
                   fast: bool = False):
  try:
    return prepare(decode_image(record["image"], fast=fast))
  except ValueError as e:
    raise ValueError(f"record id {record['id']} ({record['source'] or 'no source'}): {e}") from e


def _box_fields(box: np.ndarray | None) -> dict[str, np.ndarray]:
  """An example's 'box' (float32 [4], normalised to the model input square; zeros when there is
  none) and 'box_mask' (float32 1.0 when there is one), so that batches keep a fixed shape."""
  if box is None:
    return {"box": np.zeros((4,), np.float32), "box_mask": np.float32(0.0)}
  return {"box": np.asarray(box, np.float32), "box_mask": np.float32(1.0)}


def _preprocess_eval_with_box(pixels: np.ndarray, *, image_size: int,
                              box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
  # The letterbox keeps the whole image, so a box stays whole; the resize keeps normalised coords.
  moved = None if box is None else box_after_letterbox(box, *pixels.shape[:2])
  return preprocess_eval(pixels, image_size), moved


def decode_example(raw: bytes, *, num_labels: int, image_size: int,
                   with_box: bool = False) -> dict[str, Any]:
  """Record bytes -> {'image': uint8 [S, S, 3], 'labels': float32 multi-hot, 'id': int32}.

  The evaluation path (and unaugmented training): decode + `preprocess_eval`, exactly what
  inference does. `with_box` adds 'box' and 'box_mask' (`_box_fields`).
  """
  record = decode_record(raw)
  labels = _labels_multi_hot(record, num_labels)
  if not with_box:
    image = _decode_pixels(record, functools.partial(preprocess_eval, image_size=image_size))
    return {"image": image, "labels": labels, "id": np.int32(record["id"])}
  image, box = _decode_pixels(record, functools.partial(
      _preprocess_eval_with_box, image_size=image_size, box=record["box"]))
  return {"image": image, "labels": labels, "id": np.int32(record["id"]), **_box_fields(box)}


def _decode_augmented(raw: bytes, rng: np.random.Generator, *, num_labels: int,
                      augmenter: augment_lib.Augmenter, fast_decode: bool = False,
                      with_box: bool = False) -> dict[str, Any]:
  """Training path with augmentation: the augmenter takes the decoded source image, so a sizing
  op (rrc / resize) resamples the source once, straight to the training size. `with_box` adds
  'box' / 'box_mask', the box moved with the pixels (same random draws, same image)."""
  record = decode_record(raw)
  labels = _labels_multi_hot(record, num_labels)
  if not with_box:
    image = _decode_pixels(record, lambda pixels: augmenter(pixels, rng), fast=fast_decode)
    return {"image": image, "labels": labels}
  image, box = _decode_pixels(record, lambda pixels: augmenter(pixels, rng, box=record["box"]),
                              fast=fast_decode)
  return {"image": image, "labels": labels, **_box_fields(box)}


class _Augmenter:
  """`augment.make_augmenter(spec, image_size)` that pickles as its arguments.

  The augmenter is a closure, which plain pickle cannot ship to a worker process (cloudpickle,
  which grain uses, would ship its bytecode and captured cells); this wrapper makes each worker
  rebuild it from the spec instead, so the training dataset pickles with either.
  """

  def __init__(self, spec: Mapping[str, Any] | None, image_size: int):
    self._args = (spec, image_size)
    self._fn = augment_lib.make_augmenter(spec, image_size)  # Validates the spec, here and now.

  def __call__(self, image: np.ndarray, rng: np.random.Generator, **box):
    return self._fn(image, rng, **box)  # box=...: -> (image, box), see make_augmenter

  def __getstate__(self):
    return self._args

  def __setstate__(self, args):
    self.__init__(*args)


def _training_view(example: dict[str, Any]) -> dict[str, Any]:
  # Only what the train step consumes; ids would just be shipped to devices for nothing.
  return {k: v for k, v in example.items() if k in ("image", "labels", "box", "box_mask")}


def _record_labels(raw: bytes) -> np.ndarray:
  return decode_record(raw)["labels"]


def read_split_labels(data_dir: str | os.PathLike, split: str = "train", *,
                      process_index: int = 0, process_count: int = 1,
                      num_threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Tag indices of this process's examples of `split`, in CSR form `(offsets, indices)`.

  Example k of the process slice (global example `process_slice(n, ...).start + k`) carries
  `indices[offsets[k]:offsets[k + 1]]`. One streaming pass over the slice's records (images are
  read but not decoded); memory is ~4 bytes per label. `np.bincount(indices,
  minlength=num_labels)` over process_count=1 gives exact per-tag counts for
  `balance.tag_loss_weights`.
  """
  _, local, _ = _open_split(os.fspath(data_dir), split, process_index, process_count)
  labels = local.map(_record_labels).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=64))
  return balance.labels_to_csr(list(labels))


def _lookup(index: int, *, local: grain.MapDataset) -> bytes:
  return local[index]


def make_train_dataset(data_dir: str | os.PathLike, *, split: str = "train",
                       global_batch_size: int, image_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1, augment: bool = True,
                       augment_spec: Mapping[str, Any] | None = None,
                       repeat_factor_threshold: float | None = None,
                       repeat_factor_normalize: bool = False, max_repeat: float | None = None,
                       tag_cap: int | None = None,
                       stages: Sequence[tuple[str, int | None]] | None = None,
                       fast_decode: bool = False, num_threads: int = 2, prefetch_batches: int = 4,
                       num_workers: int = 0, with_box: bool = False) -> grain.IterDataset:
  """Infinite, shuffled (reshuffled every epoch), augmented training batches for one process.

  Yields {'image': uint8 [B, S, S, 3], 'labels': float32 [B, num_labels]} with
  B = global_batch_size // process_count and S = image_size. Iterators support
  `get_state()` / `set_state()` for exact resumption.

  Args:
    augment: False disables augmentation (decode + `preprocess_eval` only), whatever
      `augment_spec` says (it is still validated).
    augment_spec: an `augment.make_augmenter` spec (a Mapping, or a ConfigDict); None means
      `augment_spec.DEFAULT_SPEC` (flip + edge-padded shift, no rescaling).
    repeat_factor_threshold: if set, repeat factor sampling (LVIS) with this frequency threshold
      replaces the plain per-epoch shuffle: examples with rare tags appear more often. Factors
      come from one pass over this process's labels at construction (tag frequencies of the
      process's own slice). Processes stay disjoint.
    repeat_factor_normalize: rescale the repeat factors to mean 1, so an epoch keeps its length
      and examples with only common tags are under-sampled.
    max_repeat: cap on the repeat factors (at most this many appearances per epoch).
    tag_cap: N > 0 under-samples examples whose tags are all in more than N examples of the
      split, to N / (count of their commonest tag) (`balance.tag_cap_keep`; counts estimated from
      this process's slice, scaled to the split) and, like repeat_factor_threshold, replaces
      the plain shuffle.
    stages: a sampling schedule [(sampling, steps), ..., (sampling, None)] with sampling
      'balanced' (the options above) or 'all' (the plain shuffle), each for `steps` batches from
      where the previous ended, the last to the end (`sampling.stream_order`). None: one stage,
      balanced when repeat_factor_threshold or tag_cap is set.
    fast_decode: decode augmented training JPEGs with libjpeg-turbo's fast IDCT and chroma
      upsampling (`records.decode_image(fast=True)`, ~10% less decode time, pixels a few levels
      off). Ignored when `augment` is False, which always decodes exactly as evaluation does.
    num_threads: grain reader threads (per worker process when `num_workers` > 0). Each thread
      reads, decodes, augments and stacks whole batches; `prefetch_batches` are kept in flight.
    num_workers: 0 reads in this process with `num_threads` threads. N > 0 runs the same reader
      in N spawned worker processes (`_WorkerBatches`): decoding is no longer bound by this
      process's GIL, at the cost of N readers' read-ahead (N x prefetch_batches batches, plus a
      few per worker in transit through /dev/shm) and a few seconds of start-up. The batches,
      and the iterator state, are the same for every N.
    with_box: also yield 'box' float32 [B, 4] ([x0, y0, x1, y1] normalised to the S x S
      input, moved by the same augmentation as the pixels; zeros when absent) and 'box_mask'
      float32 [B] (1.0 where the record has a box still visible after augmentation, see
      `augment.MIN_BOX_VISIBLE_FRACTION`). Images and labels are the same as without it.
  """
  if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) \
      or num_workers < 0:
    raise ValueError(f"num_workers (config.data.num_workers) must be an int >= 0, got "
                     f"{num_workers!r}")
  data_dir = os.fspath(data_dir)
  batch_size = _local_batch_size(global_batch_size, process_count)
  info, local, total = _open_split(data_dir, split, process_index, process_count)
  # Built (so validated) even when disabled: a typo in a config fails now, not when enabled.
  augmenter = _Augmenter(augment_spec, image_size)
  # Separate streams for order and augmentation, different per process, derived so that adding a
  # transformation later does not silently change either.
  shuffle_seed, augment_seed = np.random.SeedSequence([seed, process_index]).generate_state(2)

  if len(local) == 0:
    raise ValueError(f"split {split!r} of {data_dir} has no examples for process "
                     f"{process_index} of {process_count}")
  balanced = bool(repeat_factor_threshold or tag_cap)
  stages = list(stages or [("balanced" if balanced else "all", None)])
  if stages == [("all", None)]:
    # shuffle before repeat: grain reseeds the shuffle for every epoch of the repeat.
    ds = local.shuffle(seed=int(shuffle_seed)).repeat()
  else:
    factors = None
    if any(name == "balanced" for name, _ in stages):
      if not balanced:
        raise ValueError("a 'balanced' sampling stage needs repeat_factor_threshold or tag_cap")
      offsets, indices = read_split_labels(data_dir, split, process_index=process_index,
                                           process_count=process_count, num_threads=num_threads)
      factors = balance.sampling_factors(
          offsets, indices, num_tags=info["num_labels"], repeat_threshold=repeat_factor_threshold,
          max_repeat=max_repeat, repeat_normalize=repeat_factor_normalize,
          cap_fraction=tag_cap / total if tag_cap else None)
    order = sampling.stream_order(len(local), stages, batch_size=batch_size,
                                  seed=int(shuffle_seed), factors=factors)
    ds = grain.MapDataset.source(order).map(functools.partial(_lookup, local=local))
  if not augment:
    ds = ds.map(functools.partial(decode_example, num_labels=info["num_labels"],
                                  image_size=image_size, with_box=with_box))
    ds = ds.map(_training_view)
  else:
    # Same seed and per-index generator as before the spec existed, so the default spec
    # reproduces earlier pipelines exactly.
    ds = ds.random_map(functools.partial(_decode_augmented, num_labels=info["num_labels"],
                                         augmenter=augmenter, fast_decode=fast_decode,
                                         with_box=with_box),
                       seed=int(augment_seed))
  ds = ds.batch(batch_size, drop_remainder=True)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  if num_workers == 0:
    return ds.to_iter_dataset(read_options)
  return _WorkerBatches(ds, read_options, num_workers=int(num_workers))


class _WorkerBatches(grain.IterDataset):
  """Batch k of `batches`, in order, read by `num_workers` grain worker processes.

  Each worker runs `batches.to_iter_dataset(read_options)` on every `num_workers`-th batch
  (`IterDataset.mp_prefetch` slices the batched MapDataset), and grain interleaves them back in
  order; since every batch is a function of its index alone (shuffle, repeat-factor sampling and
  the per-example augmentation seed all are), the stream equals the in-process reader's.

  The iterator's state is `{'next_index': k}`, the in-process reader's format, rather than
  grain's per-worker interleave state: a checkpoint resumes exactly with any `num_workers`
  (0 included), so the worker count can follow the host rather than the run.
  """

  def __init__(self, batches: grain.MapDataset, read_options: grain.ReadOptions, *,
               num_workers: int):
    super().__init__(batches)
    self._batches = batches
    self._read_options = read_options
    self._num_workers = num_workers

  def __iter__(self) -> grain.DatasetIterator:
    return _WorkerBatchIterator(self._batches, self._read_options, self._num_workers)

  def __str__(self) -> str:
    return f"_WorkerBatches(num_workers={self._num_workers})"


def _allow_grain_workers() -> None:
  # grain's worker processes read their settings from absl flags, and reading an unparsed flag
  # raises. A library user (a notebook, pytest, a benchmark) may never parse absl flags; marking
  # them parsed keeps every default. Apps that parse argv (`sw-zoo train`) have done so already.
  if not absl_flags.FLAGS.is_parsed():
    absl_flags.FLAGS.mark_as_parsed()


class _WorkerBatchIterator(grain.DatasetIterator):
  """Counts the batches it hands out; `set_state` restarts the workers at `batches[k:]`."""

  def __init__(self, batches: grain.MapDataset, read_options: grain.ReadOptions,
               num_workers: int):
    super().__init__()
    self._batches = batches
    self._read_options = read_options
    self._num_workers = num_workers
    self._next_index = 0
    self._workers: grain.DatasetIterator | None = None  # Started lazily: by next or prefetch.

  def _start(self) -> grain.DatasetIterator:
    if self._workers is None:
      _allow_grain_workers()
      # The workers' processes are spawned (not forked, so safe beside JAX's threads) and get
      # the pipeline by pickle; the queue from each holds one finished batch.
      remaining = self._batches[self._next_index:].to_iter_dataset(self._read_options)
      self._workers = iter(remaining.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self._num_workers, per_worker_buffer_size=1)))
    return self._workers

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    batch = next(self._start())
    self._next_index += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_index": self._next_index}

  def set_state(self, state: dict[str, Any]) -> None:
    next_index = state["next_index"]
    if isinstance(next_index, bool) or not isinstance(next_index, (int, np.integer)) \
        or next_index < 0:
      raise ValueError(f"training iterator state {state!r}: next_index must be an int >= 0")
    # Workers hold batches read ahead from the old position: stop them; the next batch (or
    # start_prefetch) starts new ones from the restored position.
    self._stop_workers()
    self._next_index = int(next_index)

  def start_prefetch(self) -> None:
    # Called after a checkpoint restore: worker start-up overlaps with restoring the model.
    self._assert_not_closed()
    self._start().start_prefetch()

  def _stop_workers(self) -> None:
    if self._workers is not None:
      self._workers.close()
      self._workers = None

  def close(self) -> None:
    self._stop_workers()
    super().close()

  def __str__(self) -> str:
    return f"_WorkerBatchIterator(num_workers={self._num_workers}, next_index={self._next_index})"


def _eval_example(index: int, *, local: grain.MapDataset, num_labels: int,
                  image_size: int, with_box: bool = False) -> dict[str, Any]:
  if index < len(local):
    example = decode_example(local[index], num_labels=num_labels, image_size=image_size,
                             with_box=with_box)
    example["mask"] = np.bool_(True)
    return example
  padding = {"image": np.zeros((image_size, image_size, 3), np.uint8),
             "labels": np.zeros((num_labels,), np.float32),
             "id": np.int32(-1), "mask": np.bool_(False)}
  return {**padding, **_box_fields(None)} if with_box else padding


class EvalDataset:
  """Fixed-shape evaluation batches covering this process's slice exactly once.

  Each batch is {'image': uint8 [B, S, S, 3], 'labels': float32 [B, L], 'id': int32 [B],
  'mask': bool [B]}; padded rows have mask False, id -1 and zero labels. Every process yields the
  same number of batches (`len(self)`), even when the split does not divide evenly, so that
  multi-host eval steps stay in lockstep. With `with_box`, batches also hold 'box' float32
  [B, 4] (normalised to the S x S input, after the letterbox; zeros when absent) and 'box_mask'
  float32 [B] (1.0 where the record has a box, 0 for padded rows).
  """

  def __init__(self, data_dir: str | os.PathLike, *, split: str, global_batch_size: int,
               image_size: int, process_index: int, process_count: int, num_threads: int,
               prefetch_batches: int, with_box: bool = False):
    data_dir = os.fspath(data_dir)
    self.batch_size = _local_batch_size(global_batch_size, process_count)
    info, local, total = _open_split(data_dir, split, process_index, process_count)
    self.num_examples = len(local)  # Real examples of this process.
    largest_slice = math.ceil(total / process_count)
    self.num_batches = math.ceil(largest_slice / self.batch_size)
    ds = grain.MapDataset.range(self.num_batches * self.batch_size).map(
        functools.partial(_eval_example, local=local, num_labels=info["num_labels"],
                          image_size=image_size, with_box=with_box))
    self._dataset = ds.batch(self.batch_size).to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches))

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(self._dataset)


def make_eval_dataset(data_dir: str | os.PathLike, *, split: str = "validation",
                      global_batch_size: int, image_size: int, process_index: int = 0,
                      process_count: int = 1, num_threads: int = 2,
                      prefetch_batches: int = 4, with_box: bool = False) -> EvalDataset:
  """Deterministic, unaugmented batches (decode + `preprocess_eval`) with a padding mask (and,
  with `with_box`, 'box' / 'box_mask': see `EvalDataset`)."""
  return EvalDataset(data_dir, split=split, global_batch_size=global_batch_size,
                     image_size=image_size, process_index=process_index,
                     process_count=process_count, num_threads=num_threads,
                     prefetch_batches=prefetch_batches, with_box=with_box)
