"""Host-side, per-example training augmentation (numpy + OpenCV).

Runs inside grain worker threads, so everything here is cheap and deterministic given the
`np.random.Generator` grain hands to `random_map`. Resampling, rotation and flips use OpenCV
(single-threaded: grain's threads already parallelise across examples, and OpenCV releases the
GIL); PIL is used only for the "hamming" filter, which OpenCV lacks.

Evaluation and inference prepare images with `preprocess.preprocess_eval` and nothing else.
Training augmentation is declared as data (`augment_spec`) and built once per pipeline:

    augmenter = make_augmenter({"ops": "letterbox,rrc,flip,rotate,cutout",
                                "rrc_scale": (0.87, 1.0), "rotate_deg": 10}, image_size=320)
    image = augmenter(decoded_rgb_uint8, rng)   # -> uint8 [320, 320, 3]
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

from sw_zoo.data.augment_spec import SIZING_OPS, parse_spec
from sw_zoo.data.preprocess import PAD_VALUE, WHITE, check_rgb, letterbox, pad_white, preprocess_eval, resize

Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


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
    return pad_white(inside, ct - t, b - cb, cl - l, r - cr)


def _materialise(image: np.ndarray | _Letterboxed) -> np.ndarray:
  return letterbox(image.image) if isinstance(image, _Letterboxed) else image


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
  has_sizing = any(op in SIZING_OPS for op in p["ops"])

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
                          borderMode=cv2.BORDER_CONSTANT, borderValue=WHITE)

  def op_cutout(image, rng: np.random.Generator) -> np.ndarray:
    image = _materialise(image)
    if rng.random() >= p["cutout_prob"]:
      return image
    return _cutout(image, rng, p["cutout_area"], p["cutout_ratio"], p["cutout_fill"])

  table = {"letterbox": op_letterbox, "rrc": op_rrc, "resize": op_resize, "shift": op_shift,
           "flip": op_flip, "rotate": op_rotate, "cutout": op_cutout}
  steps = tuple(table[op] for op in p["ops"])

  def augmenter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    check_rgb(image)
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
