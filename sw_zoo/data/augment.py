"""Host-side, per-example image preprocessing and augmentation (numpy + OpenCV).

Runs inside grain worker threads, so everything here is cheap and deterministic given the
`np.random.Generator` grain hands to `random_map`. Resampling, rotation and flips use OpenCV
(single-threaded: grain's threads already parallelise across examples, and OpenCV releases the
GIL); PIL is used only for the "hamming" filter, which OpenCV lacks.

Evaluation and inference prepare images with `preprocess_eval` (letterbox on white + bicubic
resize, antialiased when shrinking) and nothing else. Training augmentation is declared as data
and built once per pipeline:

    augmenter = make_augmenter({"ops": "letterbox,rrc,flip,rotate,cutout",
                                "rrc_scale": (0.87, 1.0), "rotate_deg": 10}, image_size=320)
    image = augmenter(decoded_rgb_uint8, rng)   # -> uint8 [320, 320, 3]

Ops (applied in the order given; see `SPEC_DEFAULTS` for every parameter):

  letterbox  pad the source image to a square with white (before sizing)
  rrc        random resized crop to `image_size` (area fraction `rrc_scale`, aspect `rrc_ratio`);
             the crop box is rounded to whole pixels (as torchvision's is) and only that window
             is resampled, so a letterbox before it costs no full-size copy
  resize     plain resize to `image_size` (the deterministic alternative to rrc)
  shift      edge-padded random translation by up to `shift_fraction` of the side, no rescale
  flip       horizontal flip with probability `flip_prob`
  rotate     rotation by U(-rotate_deg, rotate_deg) with white fill, with probability `rotate_prob`
  cutout     random erasing of one box (`cutout_area`, `cutout_ratio`) filled with `cutout_fill`,
             with probability `cutout_prob`

`rrc` and `resize` are the sizing ops: at most one may appear, `letterbox` must come before it and
`shift` after it. Their resampling filter is drawn per example from `resize_methods` (as JAX-CV
does; one name = fixed); see `RESIZE_METHODS`. Filters other than nearest/box shrink by more
than 2x in two steps (area averaging to twice the target, then the filter), which antialiases
like PIL's filters do. A spec without a sizing op starts from `preprocess_eval`, so the default
spec `{"ops": "shift,flip"}` is `augment()` (flip + shift) on the eval preprocessing, pixel for
pixel. That one never rescales, which matters for datasets whose size tags are fractions of the
image side (the synthetic demo); `rrc` does rescale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

# grain's worker threads already run one example per thread; OpenCV's own thread pool on top
# only adds contention (measured in benchmarks/input_pipeline.py). This is process-wide.
cv2.setNumThreads(1)

# Letterbox padding colour: WD-tagger preprocessing pads non-square images with white.
PAD_VALUE = 255
_WHITE = (PAD_VALUE,) * 3

OPS = ("letterbox", "rrc", "resize", "shift", "flip", "rotate", "cutout")
_SIZING_OPS = ("rrc", "resize")

# Filter name -> OpenCV interpolation flag (None: PIL's Hamming filter, which OpenCV lacks).
# "box" is area averaging (PIL's BOX when shrinking).
RESIZE_METHODS: dict[str, int | None] = {
    "nearest": cv2.INTER_NEAREST,
    "box": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "hamming": None,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
_EVAL_METHOD = "bicubic"
CUTOUT_FILLS = ("noise", "white", "black", "gray")

# Every key a spec may hold, with its default. Keys for ops not in `ops` are allowed and ignored,
# so one config can carry the parameters of every op.
SPEC_DEFAULTS: dict[str, Any] = {
    "ops": "shift,flip",
    "shift_fraction": 1 / 16,  # shift: max translation, fraction of the side
    "flip_prob": 0.5,
    "rrc_scale": (0.87, 1.0),  # rrc: crop area as a fraction of the (letterboxed) image
    "rrc_ratio": (3 / 4, 4 / 3),  # rrc: crop aspect ratio w/h, sampled log-uniformly
    "resize_methods": ("bicubic",),  # rrc/resize: filters to draw from, per example
    "rotate_deg": 10.0,
    "rotate_prob": 1.0,
    "cutout_prob": 0.5,
    "cutout_area": (0.02, 0.2),  # fraction of the image area
    "cutout_ratio": (0.3, 3.3),  # box aspect ratio, sampled log-uniformly
    "cutout_fill": "noise",  # noise | white | black | gray | an int 0..255
}
DEFAULT_SPEC: Mapping[str, Any] = {"ops": SPEC_DEFAULTS["ops"]}

Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_rgb(image: np.ndarray) -> None:
  if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
      or image.dtype != np.uint8:
    desc = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
            else type(image).__name__)
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {desc}")


def _pad(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
  """White padding (a copy, even with no padding)."""
  return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=_WHITE)


def letterbox(image: np.ndarray) -> np.ndarray:
  """Centres a non-square image on a white square of side max(H, W); squares pass through."""
  height, width = image.shape[:2]
  if height == width:
    return image
  side = max(height, width)
  top, left = (side - height) // 2, (side - width) // 2
  return _pad(image, top, side - height - top, left, side - width - left)


def resize(image: np.ndarray, size: int, method: str = _EVAL_METHOD) -> np.ndarray:
  """Resizes to [size, size] with the named filter (see `RESIZE_METHODS`); always a new array.

  Shrinking by more than 2x with a filter other than nearest/box first area-averages to twice
  the target, so the result is antialiased (OpenCV's interpolating filters are not by themselves).
  """
  height, width = image.shape[:2]
  flag = RESIZE_METHODS[method]
  if flag is None:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.HAMMING))
  if flag not in (cv2.INTER_NEAREST, cv2.INTER_AREA) and (height > 2 * size or width > 2 * size):
    image = cv2.resize(image, (min(width, 2 * size), min(height, 2 * size)),
                       interpolation=cv2.INTER_AREA)
  return cv2.resize(image, (size, size), interpolation=flag)


def preprocess_eval(image: np.ndarray, image_size: int) -> np.ndarray:
  """Decoded RGB uint8 [H, W, 3] -> [image_size, image_size, 3] uint8.

  Non-square images are centred on a white square (letterbox) so tags near the edges are kept
  and aspect ratios are not distorted, then resized bicubically (antialiased when shrinking by
  more than 2x; see `resize`). Evaluation and inference use exactly this function (and training
  specs without a sizing op start from it), so the model always sees images prepared one way.
  """
  _check_rgb(image)
  image = letterbox(image)
  if image.shape[0] != image_size:
    image = resize(image, image_size, _EVAL_METHOD)
  return image


def _flip(image: np.ndarray) -> np.ndarray:
  return cv2.flip(image, 1)  # A contiguous copy, ~40x faster than copying image[:, ::-1].


def augment(image: np.ndarray, rng: np.random.Generator, image_size: int,
            max_shift_fraction: float = 1 / 16) -> np.ndarray:
  """Random horizontal flip and a small random translation (pad-and-crop).

  The input is already `image_size` square (see `preprocess_eval`). Translation pads with edge
  pixels by up to `max_shift_fraction` of the side and crops back, so no content is invented and
  nothing near the centre is lost; it deliberately does not rescale, because size tags
  (`small_object`, ...) are defined relative to the image side. Same as the default spec's ops.
  """
  if image.shape[:2] != (image_size, image_size):
    raise ValueError(f"augment expects a {image_size}x{image_size} image, got {image.shape}")
  image = _shift(image, rng, max_shift_fraction)
  if rng.random() < 0.5:
    image = _flip(image)
  return np.ascontiguousarray(image)


# ---- The ops, on ndarrays. -------------------------------------------------------------------

def _shift(image: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
  """Edge-padding every side by `pad` then cropping a random size x size window, done as one
  copy: the window's part of the image plus replicated edges for the rest."""
  size = image.shape[0]
  pad = int(round(size * fraction))
  if pad > 0:
    top, left = (int(v) - pad for v in rng.integers(0, 2 * pad + 1, size=2))
    window = image[max(0, top):min(size, top + size), max(0, left):min(size, left + size)]
    image = cv2.copyMakeBorder(window, max(0, -top), max(0, top), max(0, -left), max(0, left),
                               cv2.BORDER_REPLICATE)
  return image


def _pick_method(rng: np.random.Generator, methods: tuple[str, ...]) -> str:
  return methods[0] if len(methods) == 1 else methods[int(rng.integers(len(methods)))]


def _rrc_box(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[float, float, float, float]:
  """torchvision's RandomResizedCrop.get_params, with a fixed number of draws and float boxes."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
    if w <= width and h <= height:
      left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
      return left, top, left + w, top + h
  # Fallback: the largest centred crop within the ratio range.
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, width / ratio[0]
  elif aspect > ratio[1]:
    w, h = height * ratio[1], height
  else:
    w, h = width, height
  left, top = (width - w) / 2, (height - h) / 2
  return left, top, left + w, top + h


def _pixel_span(lo: float, hi: float, limit: int) -> tuple[int, int]:
  """A float interval [lo, hi) within [0, limit] rounded to a non-empty pixel range."""
  a = min(max(int(round(lo)), 0), limit - 1)
  return a, min(max(int(round(hi)), a + 1), limit)


def _cutout(image: np.ndarray, rng: np.random.Generator, area: tuple[float, float],
            ratio: tuple[float, float], fill: str | int) -> np.ndarray:
  height, width = image.shape[:2]
  target = height * width * rng.uniform(*area)
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  h = min(height, max(1, int(round(math.sqrt(target / aspect)))))
  w = min(width, max(1, int(round(math.sqrt(target * aspect)))))
  top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
  image = np.array(image)  # Never write into the caller's array (or a read-only view).
  if fill == "noise":
    image[top:top + h, left:left + w] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  else:
    value = {"white": 255, "black": 0, "gray": 128}.get(fill, fill)
    image[top:top + h, left:left + w] = value
  return image


class _Letterboxed:
  """A letterbox not yet materialised: `rrc` cuts its window straight from the source image
  (padding only the part of the window outside it); any other op materialises the square."""

  def __init__(self, image: np.ndarray):
    self.image = image
    height, width = image.shape[:2]
    self.side = max(height, width)
    self.top, self.left = (self.side - height) // 2, (self.side - width) // 2

  def window(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Pixels [top:bottom, left:right] of the letterboxed square (a view when inside the image)."""
    height, width = self.image.shape[:2]
    t, b = top - self.top, bottom - self.top  # in source coordinates
    l, r = left - self.left, right - self.left
    ct, cb, cl, cr = max(t, 0), min(b, height), max(l, 0), min(r, width)
    if cb <= ct or cr <= cl:  # entirely in the padding
      return np.full((bottom - top, right - left, 3), PAD_VALUE, np.uint8)
    inside = self.image[ct:cb, cl:cr]
    if (ct, cb, cl, cr) == (t, b, l, r):
      return inside
    return _pad(inside, ct - t, b - cb, cl - l, r - cr)


def _materialise(image: np.ndarray | _Letterboxed) -> np.ndarray:
  return letterbox(image.image) if isinstance(image, _Letterboxed) else image


# ---- Spec parsing and validation --------------------------------------------------------------

def _fail(key: str, problem: str):
  raise ValueError(f"augmentation spec key {key!r} {problem}")


def _names(value: Any, key: str) -> tuple[str, ...]:
  if isinstance(value, str):
    names = [v.strip() for v in value.split(",")]
  elif isinstance(value, Sequence):
    names = [v.strip() if isinstance(v, str) else v for v in value]
  else:
    _fail(key, f"must be a comma-separated string or a list of names, got {value!r}")
  if not all(isinstance(n, str) for n in names):
    _fail(key, f"must hold names (strings), got {value!r}")
  return tuple(n for n in names if n)


def _number(spec: Mapping, key: str, lo: float, hi: float) -> float:
  value = spec[key]
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
      or not lo <= value <= hi:
    _fail(key, f"must be a number in [{lo}, {hi}], got {value!r}")
  return float(value)


def _range(spec: Mapping, key: str, lo: float, hi: float) -> tuple[float, float]:
  value = spec[key]
  ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
        and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                for v in value))
  if not ok or not lo <= value[0] <= value[1] <= hi:
    _fail(key, f"must be a pair (low, high) with {lo} <= low <= high <= {hi}, got {value!r}")
  return float(value[0]), float(value[1])


def parse_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
  """Validates `spec` and returns it with every default filled in and values normalised.

  Raises ValueError naming the unknown op or the key at fault.
  """
  if spec is None:
    spec = DEFAULT_SPEC
  if not isinstance(spec, Mapping) and callable(getattr(spec, "to_dict", None)):
    spec = spec.to_dict()  # an ml_collections.ConfigDict
  if not isinstance(spec, Mapping):
    raise ValueError(f"augmentation spec must be a mapping, got {type(spec).__name__}")
  unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
  if unknown:
    raise ValueError(f"augmentation spec has unknown key(s) {unknown}; known keys: "
                     f"{sorted(SPEC_DEFAULTS)}")
  full = {**SPEC_DEFAULTS, **spec}
  ops = _names(full["ops"], "ops")
  for op in ops:
    if op not in OPS:
      _fail("ops", f"names unknown op {op!r}; known ops: {', '.join(OPS)}")
  if len(set(ops)) != len(ops):
    _fail("ops", f"lists an op twice: {','.join(ops)}")
  sizing = [i for i, op in enumerate(ops) if op in _SIZING_OPS]
  if len(sizing) > 1:
    _fail("ops", f"may hold only one of rrc/resize, got {','.join(ops)}")
  if "letterbox" in ops and (not sizing or ops.index("letterbox") > sizing[0]):
    _fail("ops", "must list letterbox before rrc or resize (without them the image is already "
          "letterboxed by preprocess_eval)")
  if sizing and "shift" in ops and ops.index("shift") < sizing[0]:
    _fail("ops", "must list shift after rrc or resize (shift works on the final square)")
  methods = _names(full["resize_methods"], "resize_methods")
  if not methods or any(m not in RESIZE_METHODS for m in methods):
    _fail("resize_methods", f"must name some of {sorted(RESIZE_METHODS)}, got {methods!r}")
  fill = full["cutout_fill"]
  if not (fill in CUTOUT_FILLS or (isinstance(fill, (int, np.integer))
                                   and not isinstance(fill, bool) and 0 <= fill <= 255)):
    _fail("cutout_fill", f"must be one of {CUTOUT_FILLS} or an int 0..255, got {fill!r}")
  return {
      "ops": ops,
      "shift_fraction": _number(full, "shift_fraction", 0.0, 0.5),
      "flip_prob": _number(full, "flip_prob", 0.0, 1.0),
      "rrc_scale": _range(full, "rrc_scale", 1e-6, 1.0),
      "rrc_ratio": _range(full, "rrc_ratio", 1e-3, 1e3),
      "resize_methods": methods,
      "rotate_deg": _number(full, "rotate_deg", 0.0, 180.0),
      "rotate_prob": _number(full, "rotate_prob", 0.0, 1.0),
      "cutout_prob": _number(full, "cutout_prob", 0.0, 1.0),
      "cutout_area": _range(full, "cutout_area", 0.0, 1.0),
      "cutout_ratio": _range(full, "cutout_ratio", 1e-3, 1e3),
      "cutout_fill": fill if isinstance(fill, str) else int(fill),
  }


def make_augmenter(spec: Mapping[str, Any] | None, image_size: int) -> Augmenter:
  """Builds `augment(image, rng) -> uint8 [image_size, image_size, 3]` from a spec.

  The returned function takes a decoded RGB uint8 image of any size (straight from
  `records.decode_image`) and a `np.random.Generator`; its output is a deterministic function of
  both. `spec=None` means `DEFAULT_SPEC` (flip + shift on `preprocess_eval`'s output, identical to
  `augment()`). Raises ValueError naming an unknown op or key, or a bad value.
  """
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
      or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  size = int(image_size)
  p = parse_spec(spec)
  methods = p["resize_methods"]
  has_sizing = any(op in _SIZING_OPS for op in p["ops"])

  def op_letterbox(image: np.ndarray, rng: np.random.Generator):
    del rng
    return _Letterboxed(image) if image.shape[0] != image.shape[1] else image

  def op_rrc(image, rng: np.random.Generator) -> np.ndarray:
    side_h, side_w = ((image.side, image.side) if isinstance(image, _Letterboxed)
                      else image.shape[:2])
    box = _rrc_box(rng, side_w, side_h, p["rrc_scale"], p["rrc_ratio"])
    method = _pick_method(rng, methods)
    left, right = _pixel_span(box[0], box[2], side_w)
    top, bottom = _pixel_span(box[1], box[3], side_h)
    if isinstance(image, _Letterboxed):
      window = image.window(top, bottom, left, right)
    else:
      window = image[top:bottom, left:right]
    if window.shape[:2] == (size, size):
      return np.array(window)
    return resize(window, size, method)

  def op_resize(image, rng: np.random.Generator) -> np.ndarray:
    method = _pick_method(rng, methods)
    image = _materialise(image)
    return image if image.shape[:2] == (size, size) else resize(image, size, method)

  def op_shift(image, rng: np.random.Generator) -> np.ndarray:
    return _shift(_materialise(image), rng, p["shift_fraction"])

  def op_flip(image, rng: np.random.Generator) -> np.ndarray:
    image = _materialise(image)
    return _flip(image) if rng.random() < p["flip_prob"] else image

  def op_rotate(image, rng: np.random.Generator) -> np.ndarray:
    image = _materialise(image)
    if p["rotate_prob"] < 1.0 and rng.random() >= p["rotate_prob"]:
      return image
    angle = rng.uniform(-p["rotate_deg"], p["rotate_deg"])
    if angle == 0.0:
      return image
    height, width = image.shape[:2]
    # Counter-clockwise about the image centre (pixel-centre coordinates), as PIL's rotate.
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=_WHITE)

  def op_cutout(image, rng: np.random.Generator) -> np.ndarray:
    image = _materialise(image)
    if rng.random() >= p["cutout_prob"]:
      return image
    return _cutout(image, rng, p["cutout_area"], p["cutout_ratio"], p["cutout_fill"])

  table = {"letterbox": op_letterbox, "rrc": op_rrc, "resize": op_resize, "shift": op_shift,
           "flip": op_flip, "rotate": op_rotate, "cutout": op_cutout}
  steps = tuple(table[op] for op in p["ops"])

  def augmenter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _check_rgb(image)
    if any(s < 0 for s in image.strides):
      image = np.ascontiguousarray(image)  # OpenCV takes only positive strides
    current = image if has_sizing else preprocess_eval(image, size)
    for step in steps:
      current = step(current, rng)
    out = np.ascontiguousarray(_materialise(current))
    if np.may_share_memory(out, image):
      out = out.copy()  # e.g. "resize" of an image already at the size: never hand back the input
    if out.shape != (size, size, 3):  # Every op keeps the size it is given; this is a guard.
      raise AssertionError(f"augmenter produced {out.shape}, expected {(size, size, 3)}")
    return out

  augmenter.spec = p  # type: ignore[attr-defined]  # the parsed spec, for logging
  return augmenter
