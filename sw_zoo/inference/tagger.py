"""`Tagger`: a loaded bundle that tags and embeds images.

    tagger = sw_zoo.load_pretrained("runs/demo/bundle")
    p = tagger.predict("post.jpg")                     # one input -> one Prediction
    p.rating, p.general[:5], p.character               # {'general': 0.93, ...}, [('1girl', 0.99), ...]
    preds = tagger.predict(["a.png", pil_image, rgb_uint8_array], thresholds={"general": 0.3})
    vectors = tagger.embed(paths)                      # [N, num_features] pooled features

Inputs: file paths, encoded image bytes, PIL images, or uint8 arrays ([H, W, 3] RGB, [H, W]
grey, [H, W, 4] RGBA, or a [N, H, W, 3] stack). Files are read as everywhere else in sw_zoo
(`image_io.load_image`: EXIF orientation, transparency onto white) and every image goes through
`preprocess_eval`, the function evaluation uses, so scores match what validation measured.

Images are decoded and preprocessed on a thread pool while the device runs the previous batch.
The forward pass is one jitted function, compiled once per batch shape: full batches run at
`batch_size`, and a smaller batch (the last one, or a call with fewer images) is padded up to
the next power of two, so at most log2(batch_size) + 1 shapes ever compile.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from PIL import Image

from sw_zoo.evaluation import metrics
from sw_zoo.evaluation.thresholds import DEFAULT_THRESHOLD
from sw_zoo.inference.bundle import Bundle, read_bundle
from sw_zoo.data import image_io
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.data.preprocess import preprocess_eval

# WD taggers' MCut for characters never goes below this (a gap among near-zero scores is noise).
CHARACTER_MCUT_FLOOR = 0.15

Thresholds = float | Mapping[str, float] | None


@dataclasses.dataclass
class Prediction:
  """Tags of one image. Scores are sigmoid probabilities; lists are sorted, highest first."""
  rating: dict[str, float]  # every rating tag and its score
  general: list[tuple[str, float]]  # tags at or above the general threshold
  character: list[tuple[str, float]]  # tags at or above the character threshold
  other: dict[str, list[tuple[str, float]]] = dataclasses.field(default_factory=dict)  # more categories

  @property
  def rating_tag(self) -> str | None:
    """The most likely rating, if the model has ratings."""
    return max(self.rating, key=self.rating.get) if self.rating else None


@dataclasses.dataclass
class TagResult:
  """One input of `Tagger.iter_predict`: a prediction, or the error that kept it from one."""
  source: Any
  prediction: Prediction | None
  error: Exception | None = None


def load_rgb(source: Any) -> np.ndarray:
  """Any accepted input -> decoded uint8 RGB [H, W, 3] (before preprocessing)."""
  if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
    return np.asarray(image_io.load_image(source))
  if isinstance(source, Image.Image):
    return np.asarray(image_io.to_rgb(source))
  if isinstance(source, np.ndarray):
    if source.dtype != np.uint8:
      raise ValueError(f"image arrays must be uint8 with values 0-255, got {source.dtype}")
    if source.ndim == 2:
      return np.repeat(source[:, :, None], 3, axis=2)
    if source.ndim == 3 and source.shape[2] == 3:
      return source
    if source.ndim == 3 and source.shape[2] == 4:
      return np.asarray(image_io.to_rgb(Image.fromarray(source, "RGBA")))
    raise ValueError(f"image arrays must be [H, W, 3] RGB, [H, W] grey or [H, W, 4] RGBA, got shape {source.shape}")
  raise TypeError(f"cannot read an image from a {type(source).__name__}; pass a path, bytes, a PIL image "
                  "or a uint8 array")


def _is_single(inputs: Any) -> bool:
  if isinstance(inputs, np.ndarray):
    return inputs.ndim in (2, 3)
  return isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))


class Tagger:
  """Tags and embeds images with a bundle's model; see the module docstring.

  Args:
    bundle: a loaded `Bundle` (or use `Tagger.from_bundle(path)` / `load_pretrained`).
    batch_size: images per forward pass.
    dtype: compute dtype; default float32 on the CPU (XLA:CPU has no fast bfloat16 convs), the
      dtype the model was trained with elsewhere.
    num_workers: threads decoding and preprocessing images (default: min(4, CPU count)).
    device: a jax device (default: the first device of the default backend).
  """

  def __init__(self, bundle: Bundle, *, batch_size: int = 16, dtype: Any = None, num_workers: int | None = None,
               device: Any = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.bundle = bundle
    self.batch_size = int(batch_size)
    self.num_workers = num_workers or min(4, os.cpu_count() or 1)
    self.device = device or jax.devices()[0]
    if dtype is None:
      dtype = "float32" if self.device.platform == "cpu" else bundle.spec.dtype
    self.model = bundle.spec.create(dtype=dtype)
    self.params = jax.device_put(bundle.params, self.device)
    model = self.model

    def forward(params, images):
      features = model.apply({"params": params}, images, train=False, return_features=True)
      return jax.nn.sigmoid(features["logits"]), features["pooled"]

    self._forward = jax.jit(forward)
    tags = bundle.tags
    self._names = np.asarray(tags.names, dtype=object)
    self._by_category: dict[str, np.ndarray] = {}
    for code in dict.fromkeys(int(c) for c in tags.categories):
      name = vocab_lib.category_name(code)
      self._by_category[name] = tags.category_indices(code)

  @classmethod
  def from_bundle(cls, path: str | os.PathLike, **options: Any) -> "Tagger":
    return cls(read_bundle(path), **options)

  @property
  def tags(self) -> vocab_lib.TagVocab:
    return self.bundle.tags

  @property
  def image_size(self) -> int:
    return self.bundle.image_size

  @property
  def embedding_dim(self) -> int:
    return self.model.cfg.num_features

  def preprocess(self, source: Any) -> np.ndarray:
    """Exactly what the model is fed for `source`: uint8 [image_size, image_size, 3] RGB."""
    return preprocess_eval(load_rgb(source), self.image_size)

  # ---- Batched forward passes --------------------------------------------------------------

  def _padded_size(self, n: int) -> int:
    return self.batch_size if n >= self.batch_size else min(self.batch_size, 1 << (n - 1).bit_length())

  def _launch(self, chunk: list[tuple[Any, np.ndarray | None, Exception | None]]):
    images = [image for _, image, _ in chunk if image is not None]
    if not images:
      return chunk, None, 0
    batch = np.zeros((self._padded_size(len(images)), self.image_size, self.image_size, 3), np.uint8)
    batch[:len(images)] = images
    # Dispatch is asynchronous: the device works while the next batch is decoded.
    return chunk, self._forward(self.params, jax.device_put(batch, self.device)), len(images)

  @staticmethod
  def _finish(launched) -> Iterator[tuple[Any, np.ndarray | None, np.ndarray | None, Exception | None]]:
    chunk, outputs, n = launched
    if outputs is not None:
      probs, pooled = (np.asarray(x)[:n] for x in outputs)
    row = 0
    for source, image, error in chunk:
      if image is None:
        yield source, None, None, error
      else:
        yield source, probs[row], pooled[row], None
        row += 1

  def _stream(self, sources: Iterable[Any], skip_errors: bool):
    """(source, scores, pooled, error) per source, in input order."""
    src_iter = iter(sources)
    pending: collections.deque = collections.deque()
    lookahead = 2 * self.batch_size
    pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="sw_zoo-tagger")
    try:
      def fill():
        while len(pending) < lookahead:
          source = next(src_iter, _END)
          if source is _END:
            return
          pending.append((source, pool.submit(self.preprocess, source)))

      chunk, valid, in_flight = [], 0, None
      fill()
      while pending:
        source, future = pending.popleft()
        fill()
        try:
          chunk.append((source, future.result(), None))
          valid += 1
        except Exception as e:  # any input problem; reported per image when skipping
          if not skip_errors:
            raise
          chunk.append((source, None, e))
        if valid == self.batch_size:
          launched = self._launch(chunk)
          if in_flight is not None:
            yield from self._finish(in_flight)
          in_flight, chunk, valid = launched, [], 0
      last = self._launch(chunk) if chunk else None
      for launched in (in_flight, last):
        if launched is not None:
          yield from self._finish(launched)
    finally:
      pool.shutdown(wait=True, cancel_futures=True)

  def iter_keyed(self, items: Iterable[tuple[Any, Any]], *, skip_errors: bool = False
                 ) -> Iterator[tuple[Any, np.ndarray | None, np.ndarray | None, Exception | None]]:
    """Streams (key, scores [num_tags], pooled features [embedding_dim], error) for (key, input)
    pairs, in input order, for inputs too many to hold at once (a shard set, a large folder);
    the key (a record id, a path, a description) comes back with the outputs of its input. With
    `skip_errors`, an unreadable input yields (key, None, None, error) instead of raising."""
    keys: collections.deque = collections.deque()

    def sources():
      for key, source in items:
        keys.append(key)
        yield source

    for _, scores, pooled, error in self._stream(sources(), skip_errors):
      yield keys.popleft(), scores, pooled, error

  def scores(self, inputs: Any) -> np.ndarray:
    """Raw sigmoid scores, float32 [N, num_tags] ([num_tags] for one input)."""
    single = _is_single(inputs)
    rows = [s for _, s, _, _ in self._stream([inputs] if single else inputs, skip_errors=False)]
    out = np.stack(rows) if rows else np.zeros((0, len(self.tags)), np.float32)
    return out[0] if single else out

  def embed(self, inputs: Any) -> np.ndarray:
    """Pooled features (the input of the head), float32 [N, embedding_dim] ([embedding_dim] for one)."""
    single = _is_single(inputs)
    rows = [p for _, _, p, _ in self._stream([inputs] if single else inputs, skip_errors=False)]
    out = np.stack(rows) if rows else np.zeros((0, self.embedding_dim), np.float32)
    return out[0] if single else out

  # ---- Decisions -----------------------------------------------------------------------------

  def thresholds_for(self, thresholds: Thresholds = None) -> dict[str, float]:
    """Threshold per category name: the bundle's (`by_category`, else `default`), overridden by
    `thresholds` (one number for every category, or {category or 'default': value})."""
    config = self.bundle.thresholds
    default = config.get("default")
    by_category = dict(config.get("by_category") or {})
    if isinstance(thresholds, (int, float)):
      default, by_category = float(thresholds), {}
    elif isinstance(thresholds, Mapping):
      # A known category this model lacks (no character tags) is fine; a typo is not.
      unknown = set(thresholds) - set(self._by_category) - set(vocab_lib.CATEGORY_NAMES.values()) - {"default"}
      if unknown:
        raise ValueError(f"thresholds for unknown categories {sorted(unknown)}; this model has "
                         f"{sorted(self._by_category)} (and 'default')")
      default = thresholds.get("default", default)
      by_category.update({k: v for k, v in thresholds.items() if k != "default"})
    elif thresholds is not None:
      raise TypeError(f"thresholds must be a number, a dict or None, got {type(thresholds).__name__}")
    default = DEFAULT_THRESHOLD if default is None else float(default)
    return {name: float(by_category[name]) if by_category.get(name) is not None else default
            for name in self._by_category}

  def decide(self, scores: np.ndarray, *, thresholds: Thresholds = None, mcut: bool = False,
             top_k: int | None = None) -> Prediction:
    """A Prediction from one image's scores: ratings reported whole, every other category cut
    at its threshold (or per image by MCut), at most `top_k` tags per category."""
    limits = self.thresholds_for(thresholds)
    rating: dict[str, float] = {}
    kept: dict[str, list[tuple[str, float]]] = {}
    for category, index in self._by_category.items():
      values = scores[index]
      order = np.argsort(-values, kind="stable")
      if category == "rating":
        rating = {self._names[index[i]]: float(values[i]) for i in order}
        continue
      if mcut:  # tags strictly above the cut, as evaluation's MCut counts them
        cut = float(metrics.mcut_threshold(values)[0])
        if category == "character":
          cut = max(cut, CHARACTER_MCUT_FLOOR)
        keep = values > cut
      else:
        keep = values >= limits[category]
      chosen = [(self._names[index[i]], float(values[i])) for i in order if keep[i]]
      kept[category] = chosen[:top_k] if top_k is not None else chosen
    return Prediction(rating=rating, general=kept.pop("general", []), character=kept.pop("character", []),
                      other=kept)

  def iter_predict(self, sources: Iterable[Any], *, thresholds: Thresholds = None, mcut: bool = False,
                   top_k: int | None = None, skip_errors: bool = False) -> Iterator[TagResult]:
    """Streams TagResults in input order (any iterable of inputs, e.g. a folder walk). With
    `skip_errors`, an unreadable input yields a result with its error instead of raising."""
    self.thresholds_for(thresholds)  # a bad threshold fails before any work
    for source, scores, _, error in self._stream(sources, skip_errors):
      prediction = None if scores is None else self.decide(scores, thresholds=thresholds, mcut=mcut, top_k=top_k)
      yield TagResult(source, prediction, error)

  def predict(self, inputs: Any, *, thresholds: Thresholds = None, mcut: bool = False,
              top_k: int | None = None) -> Prediction | list[Prediction]:
    """Predictions for the inputs (a list), or one Prediction for a single input. `thresholds`:
    None (the bundle's), a number for every category, or {'general': .., 'character': ..}."""
    single = _is_single(inputs)
    results = self.iter_predict([inputs] if single else inputs, thresholds=thresholds, mcut=mcut, top_k=top_k)
    predictions = [r.prediction for r in results]
    return predictions[0] if single else predictions


_END = object()
