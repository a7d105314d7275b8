"""`Tagger`: a loaded bundle that tags and embeds images.

    tagger = sw_zoo.load_pretrained("runs/demo/bundle")
    p = tagger.predict("post.jpg")                     # one input -> one Prediction
    p.rating, p.general[:5], p.character               # {'general': 0.93, ...}, [('1girl', 0.99), ...]
    p.box                                              # (x0, y0, x1, y1) of the image, with a box head
    preds = tagger.predict(["a.png", pil_image, rgb_uint8_array], thresholds={"general": 0.3})
    vectors = tagger.embed(paths)                      # [N, num_features] pooled features

Inputs: file paths, encoded image bytes, PIL images, or uint8 arrays ([H, W, 3] RGB, [H, W]
grey, [H, W, 4] RGBA, or a [N, H, W, 3] stack). Files are read as everywhere else in sw_zoo
(`image_io.load_image`: EXIF orientation, transparency onto white) and every image goes through
`preprocess_eval`, the function evaluation uses, so scores match what validation measured.

Images are decoded and preprocessed on a thread pool while the backend runs the previous batch.
The forward pass (`backends`) is the model's own JAX code, jitted and compiled once per batch
shape (full batches at `batch_size`, a smaller one padded up to the next power of two), or the
exported graph in onnxruntime, which `load_pretrained` picks on a CPU where it is installed.
`tta="flip"` averages each image's scores with its mirror's, as `sw-zoo eval --tta flip`.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from sw_zoo.evaluation import metrics
from sw_zoo.evaluation.thresholds import DEFAULT_THRESHOLD
from sw_zoo.inference import backends
from sw_zoo.inference.bundle import Bundle, read_bundle
from sw_zoo.data import image_io
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.data.preprocess import box_to_source, preprocess_eval

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
  # A model with a box head: (x0, y0, x1, y1) as fractions of the input image's width and height.
  box: tuple[float, float, float, float] | None = None

  @property
  def rating_tag(self) -> str | None:
    """The most likely rating, if the model has ratings."""
    return max(self.rating, key=self.rating.get) if self.rating else None

  def to_json(self) -> dict[str, Any]:
    """{'rating': {tag: score}, 'general': {..}, 'character': {..}, 'other': {category: {..}}},
    each ordered by score, highest first, plus 'box': [x0, y0, x1, y1] from a model with a box head
    (what `sw-zoo serve` and `sw-zoo tag --output_path` write)."""
    ranked = lambda pairs: {name: round(float(score), 6) for name, score in pairs}  # noqa: E731
    out = {"rating": ranked(sorted(self.rating.items(), key=lambda kv: -kv[1])),
           "general": ranked(self.general), "character": ranked(self.character),
           "other": {category: ranked(pairs) for category, pairs in self.other.items()}}
    if self.box is not None:
      out["box"] = [round(float(v), 6) for v in self.box]
    return out


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
    backend: 'jax', 'onnx' (onnxruntime on the bundle's model.onnx, or on the graph built from its
      params) or 'auto' (onnxruntime when JAX runs on the CPU and it is installed; see
      `backends.choose`).
    dtype: JAX compute dtype; default float32 on the CPU (XLA:CPU has no fast bfloat16 convs), the
      dtype the model was trained with elsewhere.
    num_workers: threads decoding and preprocessing images (default: min(4, CPU count)).
    device: a jax device (default: the first device of the default backend).
  """

  def __init__(self, bundle: Bundle, *, batch_size: int = 16, backend: str = "jax", dtype: Any = None,
               num_workers: int | None = None, device: Any = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.bundle = bundle
    self.batch_size = int(batch_size)
    self.num_workers = num_workers or min(4, os.cpu_count() or 1)
    self.forward = backends.make_forward(bundle, backend, dtype=dtype, device=device)
    tags = bundle.tags
    self._names = np.asarray(tags.names, dtype=object)
    self._by_category: dict[str, np.ndarray] = {}
    for code in dict.fromkeys(int(c) for c in tags.categories):
      name = vocab_lib.category_name(code)
      self._by_category[name] = tags.category_indices(code)
    self._index = {name: i for i, name in enumerate(tags.names)}
    self._category_of = [vocab_lib.category_name(int(c)) for c in tags.categories]
    self._bundle_limits: np.ndarray | None = None

  @property
  def backend(self) -> str:
    return self.forward.name

  def describe_backend(self) -> str:
    """'jax', 'onnx' or, for a converted model.onnx, 'onnx int8' (for logs and /healthz)."""
    precision = getattr(self.forward, "precision", "fp32")
    return self.backend if precision == "fp32" else f"{self.backend} {precision}"

  @property
  def params(self) -> Any:
    """The JAX backend's params on its device (the onnx backend has its weights in the graph)."""
    return getattr(self.forward, "params", None)

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
    dim = self.forward.embedding_dim
    if dim is None:
      raise ValueError(f"{self.bundle.path}: its model.onnx has no embedding output (exported before it "
                       "existed); re-export it, or use backend='jax' to embed")
    return int(dim)

  @property
  def has_box(self) -> bool:
    """Whether the model predicts a box per image (a box head; `Prediction.box`)."""
    return self.bundle.spec.has_box

  def preprocess(self, source: Any) -> np.ndarray:
    """Exactly what the model is fed for `source`: uint8 [image_size, image_size, 3] RGB."""
    return self.prepare(source)[0]

  def prepare(self, source: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """The model input (`preprocess`) and the decoded image's (height, width), which a box on
    the input square needs to be mapped back onto the image (`box_to_source`)."""
    rgb = load_rgb(source)
    return preprocess_eval(rgb, self.image_size), rgb.shape[:2]

  # ---- Batched forward passes --------------------------------------------------------------

  def scores_of_batch(self, images: np.ndarray, *, tta: str | None = None) -> np.ndarray:
    """Sigmoid scores float32 [N, num_tags] of already preprocessed images (uint8
    [N, image_size, image_size, 3], as `preprocess` makes them), in one forward pass per
    `batch_size` images. Thread-safe: a server may call it from worker threads."""
    return self.outputs_of_batch(images, tta=tta)[0]

  def outputs_of_batch(self, images: np.ndarray, *, tta: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores [N, num_tags], boxes [N, 4] on the input square or None without a box head) of
    preprocessed images, as `scores_of_batch`."""
    flip = backends.check_tta(tta)
    images = np.asarray(images)
    want = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != want or images.dtype != np.uint8:
      raise ValueError(f"expected uint8 images [N, {want[0]}, {want[1]}, 3], got {images.dtype} {list(images.shape)}")
    parts = [self.forward.launch(images[i:i + self.batch_size], batch_size=self.batch_size, flip=flip).result()
             for i in range(0, len(images), self.batch_size)]
    if not parts:
      return np.zeros((0, len(self.tags)), np.float32), (np.zeros((0, 4), np.float32) if self.has_box else None)
    scores = np.concatenate([p[0] for p in parts])
    return scores, (np.concatenate([p[2] for p in parts]) if parts[0][2] is not None else None)

  def _launch(self, chunk: list[tuple[Any, tuple | None, Exception | None]], flip: bool):
    images = [prepared[0] for _, prepared, _ in chunk if prepared is not None]
    if not images:
      return chunk, None
    # Asynchronous: the backend works while the next batch is decoded.
    return chunk, self.forward.launch(np.stack(images), batch_size=self.batch_size, flip=flip)

  @staticmethod
  def _finish(launched) -> Iterator[tuple[Any, np.ndarray | None, np.ndarray | None, np.ndarray | None,
                                          Exception | None]]:
    chunk, pending = launched
    if pending is not None:
      probs, pooled, boxes = pending.result()
    row = 0
    for source, prepared, error in chunk:
      if prepared is None:
        yield source, None, None, None, error
      else:
        # The box is predicted on the letterboxed square: mapped back onto the image as given.
        box = None if boxes is None else box_to_source(boxes[row], *prepared[1])
        yield source, probs[row], pooled[row], box, None
        row += 1

  def _stream(self, sources: Iterable[Any], skip_errors: bool, tta: str | None = None):
    """(source, scores, pooled, box or None, error) per source, in input order."""
    flip = backends.check_tta(tta)
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
          pending.append((source, pool.submit(self.prepare, source)))

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
          launched = self._launch(chunk, flip)
          if in_flight is not None:
            yield from self._finish(in_flight)
          in_flight, chunk, valid = launched, [], 0
      last = self._launch(chunk, flip) if chunk else None
      for launched in (in_flight, last):
        if launched is not None:
          yield from self._finish(launched)
    finally:
      pool.shutdown(wait=True, cancel_futures=True)

  def iter_keyed(self, items: Iterable[tuple[Any, Any]], *, skip_errors: bool = False, tta: str | None = None
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

    for _, scores, pooled, _, error in self._stream(sources(), skip_errors, tta):
      yield keys.popleft(), scores, pooled, error

  def scores(self, inputs: Any, *, tta: str | None = None) -> np.ndarray:
    """Raw sigmoid scores, float32 [N, num_tags] ([num_tags] for one input). tta='flip': the
    mean of each image's and its mirror's (as `sw-zoo eval --tta flip`)."""
    single = _is_single(inputs)
    rows = [s for _, s, _, _, _ in self._stream([inputs] if single else inputs, skip_errors=False, tta=tta)]
    out = np.stack(rows) if rows else np.zeros((0, len(self.tags)), np.float32)
    return out[0] if single else out

  def embed(self, inputs: Any) -> np.ndarray:
    """Pooled features (the input of the head), float32 [N, embedding_dim] ([embedding_dim] for one)."""
    self.embedding_dim  # a graph without the embedding output fails here, before any decoding
    single = _is_single(inputs)
    rows = [p for _, _, p, _, _ in self._stream([inputs] if single else inputs, skip_errors=False)]
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

  def tag_thresholds(self, thresholds: Thresholds = None) -> np.ndarray:
    """The threshold of every output, float32 [num_tags]: its category's (`thresholds_for`), or
    the tag's own where the bundle has per-tag ones (`by_tag`, tuned at the end of training),
    unless `thresholds` overrides the tag's category (a number overrides every category)."""
    if thresholds is None and self._bundle_limits is not None:  # the common case, per image in a server
      return self._bundle_limits
    per_category = self.thresholds_for(thresholds)
    limits = np.zeros(len(self._names), np.float32)
    for category, index in self._by_category.items():
      limits[index] = per_category[category]
    if isinstance(thresholds, (int, float)):
      return limits
    overridden = set(thresholds or {}) - {"default"}
    for name, value in (self.bundle.thresholds.get("by_tag") or {}).items():
      i = self._index.get(name)
      if i is not None and self._category_of[i] not in overridden:
        limits[i] = float(value)
    if thresholds is None:
      self._bundle_limits = limits
    return limits

  def decide(self, scores: np.ndarray, *, thresholds: Thresholds = None, mcut: bool = False,
             top_k: int | None = None, limits: np.ndarray | None = None) -> Prediction:
    """A Prediction from one image's scores: ratings reported whole, every other category cut
    at its tags' thresholds (`tag_thresholds`; pass `limits` from it to skip recomputing them
    per image) or per image by MCut, at most `top_k` tags per category."""
    if limits is None:
      limits = self.tag_thresholds(thresholds)
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
        keep = values >= limits[index]
      chosen = [(self._names[index[i]], float(values[i])) for i in order if keep[i]]
      kept[category] = chosen[:top_k] if top_k is not None else chosen
    return Prediction(rating=rating, general=kept.pop("general", []), character=kept.pop("character", []),
                      other=kept)

  def iter_predict(self, sources: Iterable[Any], *, thresholds: Thresholds = None, mcut: bool = False,
                   top_k: int | None = None, skip_errors: bool = False, tta: str | None = None
                   ) -> Iterator[TagResult]:
    """Streams TagResults in input order (any iterable of inputs, e.g. a folder walk). With
    `skip_errors`, an unreadable input yields a result with its error instead of raising."""
    limits = self.tag_thresholds(thresholds)  # a bad threshold fails before any work
    backends.check_tta(tta)
    for source, scores, _, box, error in self._stream(sources, skip_errors, tta):
      prediction = None if scores is None else self.decide(scores, mcut=mcut, top_k=top_k, limits=limits)
      if prediction is not None and box is not None:
        prediction.box = tuple(float(v) for v in box)
      yield TagResult(source, prediction, error)

  def predict(self, inputs: Any, *, thresholds: Thresholds = None, mcut: bool = False,
              top_k: int | None = None, tta: str | None = None) -> Prediction | list[Prediction]:
    """Predictions for the inputs (a list), or one Prediction for a single input. `thresholds`:
    None (the bundle's), a number for every category, or {'general': .., 'character': ..}.
    tta='flip' averages each image's scores with its mirror's."""
    single = _is_single(inputs)
    results = self.iter_predict([inputs] if single else inputs, thresholds=thresholds, mcut=mcut, top_k=top_k,
                                tta=tta)
    predictions = [r.prediction for r in results]
    return predictions[0] if single else predictions


_END = object()
