"""Class imbalance: per-tag loss weights and repeat-factor over/under-sampling.

Booru tag frequencies are long-tailed (a few tags on most posts, thousands on a handful), so two
standard remedies are offered, each a pure function of tag counts:

* `tag_loss_weights`: one weight per tag for the loss (inverse-sqrt frequency, the
  "effective number of samples" of Cui et al. 2019, or the log-ratio weights of the imbalanced
  fine-tuning write-up), normalised to mean 1.
* `repeat_factors` + `RepeatFactorSampler`: repeat factor sampling as in LVIS (Gupta et al. 2019).
  Each example gets r = max over its tags of max(1, sqrt(t / f(tag))), f = the fraction of
  examples carrying the tag; every epoch lists each example floor(r) times plus once more with
  probability frac(r), reshuffled, deterministically per (seed, epoch). `normalize=True` rescales
  r to mean 1, which also under-samples examples whose tags are all common and keeps the epoch
  length. `pipeline.make_train_dataset(repeat_factor_threshold=t)` wires it in.
* `tag_cap_keep` + `sampling_factors`: the write-up's under-sampling of over-represented classes
  before over-sampling the rest, for multi-label data: an example whose tags are all in more
  than N images is kept with probability N / (count of its commonest tag); every other example
  keeps its (capped) repeat factor. `make_train_dataset(tag_cap=N, max_repeat=m)`.

Labels are passed in CSR form, `(offsets, indices)`: example i carries tags
`indices[offsets[i]:offsets[i + 1]]` (`labels_to_csr` builds it from a list of arrays); this
stays compact for millions of examples.
"""

from __future__ import annotations

import bisect
import collections
import sys
import threading
from collections.abc import Sequence

import numpy as np

LOSS_WEIGHT_METHODS = ("none", "inverse_sqrt", "inverse", "effective_num", "log_ratio")


def tag_loss_weights(counts: Sequence[int] | np.ndarray, num_examples: int, *,
                     method: str = "inverse_sqrt", beta: float = 0.999,
                     clip: float | None = None) -> np.ndarray:
  """Per-tag loss weights from tag counts, float32 [T] with mean 1 over tags.

  Args:
    counts: number of training examples carrying each tag (e.g. `TagVocab.counts`, or
      `np.bincount` of `pipeline.read_split_labels`' indices). Zero counts are treated as 1.
    num_examples: number of training examples the counts were taken over.
    method: 'none' (all ones), 'inverse_sqrt' (w ~ 1/sqrt(f)), 'inverse' (w ~ 1/f),
      'effective_num' (w ~ (1 - beta) / (1 - beta**count), Cui et al. 2019) or 'log_ratio'
      (w ~ log(1 + (max_count / count)**2), from the imbalanced fine-tuning write-up; it grows
      only logarithmically, ~2 log(max_count / count) for rare tags, and is independent of
      num_examples).
    beta: for 'effective_num', in [0, 1); 0.999-0.9999 are usual (larger = closer to 1/count).
    clip: if set (>= 1), the largest weight is at most `clip` times the smallest, so a tag seen
      once cannot dominate the loss.

  Use: `(per_tag_bce * weights[None, :]).sum(-1)`.
  """
  counts = np.asarray(counts)
  if counts.ndim != 1 or counts.size == 0:
    raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    bad = int(np.flatnonzero(~np.isfinite(counts) | (counts < 0))[0])
    raise ValueError(f"counts must be finite and non-negative; tag {bad} has {counts[bad]}")
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) \
      or num_examples < 1:
    raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
  if method not in LOSS_WEIGHT_METHODS:
    raise ValueError(f"method must be one of {LOSS_WEIGHT_METHODS}, got {method!r}")
  if clip is not None and not clip >= 1.0:
    raise ValueError(f"clip must be None or >= 1, got {clip!r}")
  n = np.maximum(counts.astype(np.float64), 1.0)
  if method == "none":
    weights = np.ones_like(n)
  elif method == "inverse_sqrt":
    weights = np.sqrt(num_examples / n)
  elif method == "inverse":
    weights = num_examples / n
  elif method == "log_ratio":
    # n >= 1 (zero counts were raised to 1 above), so an unseen tag weighs as much as a tag seen
    # once, and the commonest tag gets log 2 > 0 rather than nothing.
    weights = np.log1p(np.square(n.max() / n))
  else:
    if not 0.0 <= beta < 1.0:
      raise ValueError(f"beta must be in [0, 1) for method 'effective_num', got {beta!r}")
    # (1 - beta) / (1 - beta**n), computed stably: -expm1(n * log(beta)) = 1 - beta**n.
    weights = (1.0 - beta) / -np.expm1(n * np.log(beta)) if beta > 0 else np.ones_like(n)
  if clip is not None:
    weights = np.minimum(weights, weights.min() * clip)
  return (weights / weights.mean()).astype(np.float32)


def labels_to_csr(labels: Sequence[Sequence[int] | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """A list of per-example tag-index arrays -> (offsets int64 [N+1], indices int32 [nnz])."""
  lengths = np.fromiter((len(x) for x in labels), dtype=np.int64, count=len(labels))
  offsets = np.zeros(len(labels) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  indices = (np.concatenate([np.asarray(x, np.int32) for x in labels]) if offsets[-1]
             else np.zeros((0,), np.int32))
  return offsets, indices


def repeat_factors(offsets: np.ndarray, indices: np.ndarray, *, threshold: float,
                   num_tags: int | None = None, tag_frequency: np.ndarray | None = None,
                   normalize: bool = False, max_factor: float | None = None) -> np.ndarray:
  """LVIS repeat factors, float64 [N]: r(i) = max over tags of i of max(1, sqrt(t / f(tag))).

  Args:
    offsets, indices: the examples' labels in CSR form (see the module docstring).
    threshold: t, a frequency in (0, 1]; tags rarer than that are repeated. LVIS uses 0.001.
    num_tags: size of the vocabulary (default: largest index + 1).
    tag_frequency: f per tag, fraction of examples carrying it; default computed from the
      labels given (the examples that will be sampled).
    normalize: rescale to mean 1 (keeps the epoch length, under-samples common-only examples).
    max_factor: cap on r (applied before normalising).
  Examples without tags get r = 1.
  """
  offsets = np.asarray(offsets, np.int64)
  indices = np.asarray(indices)
  num_examples = len(offsets) - 1
  if num_examples < 1 or offsets[0] != 0 or offsets[-1] != len(indices) \
      or np.any(np.diff(offsets) < 0):
    raise ValueError("offsets must start at 0, be non-decreasing and end at len(indices), "
                     f"with at least one example; got {len(offsets)} offsets, "
                     f"{len(indices)} indices")
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"repeat factor threshold must be in (0, 1], got {threshold!r}")
  if max_factor is not None and not max_factor >= 1.0:
    raise ValueError(f"max_factor must be None or >= 1, got {max_factor!r}")
  if indices.size and indices.min() < 0:
    raise ValueError(f"label indices must be non-negative, got {int(indices.min())}")
  num_tags = num_tags or (int(indices.max()) + 1 if indices.size else 1)
  if tag_frequency is None:
    tag_frequency = np.bincount(indices, minlength=num_tags) / num_examples
  tag_frequency = np.asarray(tag_frequency, np.float64)
  if indices.size and indices.max() >= len(tag_frequency):
    raise ValueError(f"label index {int(indices.max())} is outside the {len(tag_frequency)} "
                     "tags of tag_frequency")
  with np.errstate(divide="ignore"):
    per_tag = np.maximum(1.0, np.sqrt(threshold / np.maximum(tag_frequency, 1e-12)))
  factors = np.ones(num_examples, np.float64)
  nonempty = np.flatnonzero(np.diff(offsets) > 0)
  if nonempty.size:
    factors[nonempty] = np.maximum.reduceat(per_tag[indices], offsets[nonempty])
  if max_factor is not None:
    factors = np.minimum(factors, max_factor)
  if normalize:
    factors = factors / factors.mean()
  return factors


def tag_cap_keep(offsets: np.ndarray, indices: np.ndarray, *, cap_fraction: float,
                 num_tags: int | None = None) -> np.ndarray:
  """Keep probability per example, float64 [N] in (0, 1], capping over-represented tags.

  A tag is over-represented when its frequency f (fraction of these examples carrying it) exceeds
  `cap_fraction` (the cap N as a fraction of the split: N / num_examples). An example carrying
  any tag that is not over-represented, or no tag, is always kept (p = 1): thinning it would also
  thin that rarer tag. An example whose tags are all over-represented is kept with
  p = min over its tags of cap_fraction / f(tag), the keep rate of its commonest tag. So every
  kept-at-random example of a tag t has p <= cap_fraction / f(t), and t is expected in at most
  N + (t's examples that carry a tag under the cap) images per epoch: the cap binds except where
  keeping a rarer tag needs t's images.
  """
  offsets = np.asarray(offsets, np.int64)
  indices = np.asarray(indices)
  num_examples = len(offsets) - 1
  if not cap_fraction > 0.0:
    raise ValueError(f"cap_fraction must be > 0, got {cap_fraction!r}")
  if num_examples < 1:
    raise ValueError("tag_cap_keep needs at least one example")
  num_tags = num_tags or (int(indices.max()) + 1 if indices.size else 1)
  frequency = np.bincount(indices, minlength=num_tags) / num_examples
  # Per tag: cap / f for over-represented tags (< 1), and 1 for the rest.
  per_tag = np.minimum(1.0, cap_fraction / np.maximum(frequency, 1e-300))
  keep = np.ones(num_examples, np.float64)
  nonempty = np.flatnonzero(np.diff(offsets) > 0)
  if nonempty.size:
    # The max over tags is 1 iff some tag is under the cap; else it is cap / (largest f).
    all_over = np.maximum.reduceat(per_tag[indices], offsets[nonempty]) < 1.0
    keep[nonempty[all_over]] = np.minimum.reduceat(per_tag[indices], offsets[nonempty])[all_over]
  return keep


def sampling_factors(offsets: np.ndarray, indices: np.ndarray, *, num_tags: int | None = None,
                     repeat_threshold: float | None = None, max_repeat: float | None = None,
                     repeat_normalize: bool = False, cap_fraction: float | None = None) -> np.ndarray:
  """Expected appearances per epoch of each example, float64 [N], for `RepeatFactorSampler`.

  Examples whose tags are all over the cap (`tag_cap_keep` < 1) are under-sampled to their keep
  probability; every other example gets its LVIS repeat factor (`repeat_factors` with
  `repeat_threshold`, capped at `max_repeat`; 1 without a threshold). The two never multiply: an
  example thinned for its common tags is not repeated back up, so the cap holds.
  """
  factors = np.ones(len(offsets) - 1, np.float64)
  if repeat_threshold:
    factors = repeat_factors(offsets, indices, threshold=repeat_threshold, num_tags=num_tags,
                             normalize=repeat_normalize, max_factor=max_repeat or None)
  elif max_repeat:
    raise ValueError("max_repeat caps the repeat factors of repeat_threshold; set that too")
  if cap_fraction:
    keep = tag_cap_keep(offsets, indices, cap_fraction=cap_fraction, num_tags=num_tags)
    factors = np.where(keep < 1.0, keep, factors)
  return factors


class RepeatFactorSampler:
  """An endless, deterministic stream of example indices for grain (`MapDataset.source(...)`).

  Epoch e lists example i floor(r_i) times plus once more with probability frac(r_i), shuffled,
  all drawn from `np.random.default_rng([seed, e])`; epochs follow each other without gaps. Item
  `p` of the stream depends only on (factors, seed, p), so a grain iterator's `next_index` is a
  complete checkpoint. Epoch boundaries are found lazily (one pass of draws per epoch, cached);
  the two most recent epochs' index arrays are kept, so memory stays ~2 x the epoch length.
  Thread-safe (grain reads with several threads).
  """

  def __init__(self, factors: np.ndarray, seed: int):
    factors = np.asarray(factors, np.float64)
    if factors.ndim != 1 or factors.size == 0 or not np.all(np.isfinite(factors)) \
        or np.any(factors < 0):
      raise ValueError("repeat factors must be a non-empty 1-D array of finite values >= 0")
    if factors.sum() < 1.0:
      raise ValueError(f"repeat factors sum to {factors.sum():.3g}; an epoch would usually be "
                       "empty")
    self._whole = np.floor(factors).astype(np.int64)
    self._frac = factors - self._whole
    self._seed = int(seed)
    self._dtype = np.int32 if factors.size < 2**31 else np.int64
    self._starts = [0]  # _starts[e] = stream position where epoch e begins.
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  @property
  def num_examples(self) -> int:
    return len(self._whole)

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    return (f"RepeatFactorSampler(num_examples={self.num_examples}, seed={self._seed}, "
            f"mean_factor={float((self._whole + self._frac).mean()):.3f})")

  def __getstate__(self):  # For pickling into grain worker processes: drop lock and cache.
    return {"_whole": self._whole, "_frac": self._frac, "_seed": self._seed,
            "_dtype": self._dtype}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._starts = [0]
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()

  def _counts(self, rng: np.random.Generator) -> np.ndarray:
    return self._whole + (rng.random(len(self._frac)) < self._frac)

  def epoch(self, epoch: int) -> np.ndarray:
    """The example indices of `epoch`, in stream order."""
    with self._lock:
      return self._epoch_locked(epoch)

  def _epoch_locked(self, epoch: int) -> np.ndarray:
    cached = self._cache.get(epoch)
    if cached is not None:
      self._cache.move_to_end(epoch)
      return cached
    rng = np.random.default_rng([self._seed, epoch])
    order = np.repeat(np.arange(self.num_examples, dtype=self._dtype), self._counts(rng))
    rng.shuffle(order)
    self._cache[epoch] = order
    while len(self._cache) > 2:
      self._cache.popitem(last=False)
    return order

  def epoch_start(self, epoch: int) -> int:
    """Stream position of the first item of `epoch`."""
    with self._lock:
      self._extend_to_epoch(epoch)
      return self._starts[epoch]

  def _extend_to_epoch(self, epoch: int) -> None:
    while len(self._starts) <= epoch:
      e = len(self._starts) - 1
      length = int(self._counts(np.random.default_rng([self._seed, e])).sum())
      self._starts.append(self._starts[-1] + length)

  def _extend_to_position(self, position: int) -> None:
    while self._starts[-1] <= position:
      self._extend_to_epoch(len(self._starts))

  def __getitem__(self, position: int) -> int:
    position = int(position)
    if position < 0:
      raise IndexError(f"stream position must be non-negative, got {position}")
    with self._lock:
      self._extend_to_position(position)
      # Epoch e covers [starts[e], starts[e + 1]); empty epochs have equal starts.
      epoch = bisect.bisect_right(self._starts, position) - 1
      return int(self._epoch_locked(epoch)[position - self._starts[epoch]])
