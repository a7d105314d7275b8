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
    image, box = augmenter(decoded_rgb_uint8, rng, box=record["box"])

Boxes: every op also reports how it moved pixels, as an affine map of continuous pixel
coordinates (pixel i spans [i, i + 1)) plus the frame it leaves, so one piece of code carries a
box through any spec (`_BoxTrack`). The box travels as a polygon: its four corners mapped
through each op and clipped to each op's frame, because crops, shifts and rotations drop pixels
for good (a corner rotated out of the frame does not come back with a later op). The result is
the polygon's axis-aligned bounding box, normalised to the output square; for a rotation that is
the bounding box of the rotated corners. A box of which less than `MIN_BOX_VISIBLE_FRACTION` of
the area is still inside the output is returned as None (nothing sensible is left to regress
onto). Tracking draws no random numbers, so the pixels are the same with and without a box.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

from sw_zoo.data.augment_spec import SIZING_OPS, parse_spec
from sw_zoo.data.preprocess import (PAD_VALUE, WHITE, check_rgb, letterbox, letterbox_offsets,
                                    pad_white, preprocess_eval, resize)
from sw_zoo.data.records import check_box

# augmenter(image, rng) -> image, or augmenter(image, rng, box=box) -> (image, box or None).
Augmenter = Callable[..., Any]

# A box with less than this fraction of its area inside the augmented image is dropped (None).
MIN_BOX_VISIBLE_FRACTION = 0.25
_NO_BOX = object()  # `box` not passed at all (as opposed to box=None: a record without a box)


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

def _draw_shift(rng: np.random.Generator, size: int,
                fraction: float) -> tuple[int, int] | None:
  """(top, left) of the output window in input pixels, each in [-pad, pad]; None (and no draw)
  when the padding rounds to 0 pixels."""
  pad = int(round(size * fraction))
  if pad == 0:
    return None
  top, left = (int(v) - pad for v in rng.integers(0, 2 * pad + 1, size=2))
  return top, left


def _shift_by(image: np.ndarray, top: int, left: int) -> np.ndarray:
  """Edge-padding every side then cropping the size x size window at (top, left), done as one
  copy: the window's part of the image plus replicated edges for the rest."""
  size = image.shape[0]
  window = image[max(0, top):min(size, top + size), max(0, left):min(size, left + size)]
  return cv2.copyMakeBorder(window, max(0, -top), max(0, top), max(0, -left), max(0, left),
                            cv2.BORDER_REPLICATE)


def _shift(image: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
  """A random edge-padded translation by up to `fraction` of the side."""
  offsets = _draw_shift(rng, image.shape[0], fraction)
  return image if offsets is None else _shift_by(image, *offsets)


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
    self.side, self.top, self.left = letterbox_offsets(height, width)

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


def _frame(image: np.ndarray | _Letterboxed) -> tuple[int, int]:
  """(width, height) of what an op hands on (the square, for a letterbox not yet materialised)."""
  if isinstance(image, _Letterboxed):
    return image.side, image.side
  return image.shape[1], image.shape[0]


# ---- Geometry, for boxes. --------------------------------------------------------------------
# An op's geometry is (matrix, width, height): the 2x3 affine map from its input's continuous
# pixel coordinates to its output's, and the output frame. None: pixels did not move.

def _affine(a: float, b: float, tx: float, c: float, d: float, ty: float) -> np.ndarray:
  return np.array([[a, b, tx], [c, d, ty]], np.float64)


def _scale_and_shift(sx: float, sy: float, tx: float = 0.0, ty: float = 0.0) -> np.ndarray:
  """x' = x * sx + tx, y' = y * sy + ty."""
  return _affine(sx, 0.0, tx, 0.0, sy, ty)


def _from_pixel_centres(matrix: np.ndarray) -> np.ndarray:
  """An affine map of pixel-centre coordinates (OpenCV's: pixel i is at i) as one of continuous
  coordinates (pixel i spans [i, i + 1), so its centre is at i + 0.5)."""
  linear = matrix[:, :2]
  return np.concatenate([linear, (matrix[:, 2] + 0.5 - linear @ (0.5, 0.5))[:, None]], axis=1)


def _clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray:
  """Sutherland-Hodgman: the convex polygon `points` [N, 2] cut to [0, width] x [0, height]."""
  for axis, bound, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False),
                                  (1, height, True)):
    if len(points) == 0:
      break
    inside = points[:, axis] <= bound if keep_below else points[:, axis] >= bound
    if inside.all():
      continue
    out = []
    for i in range(len(points)):
      p, q = points[i], points[(i + 1) % len(points)]
      p_in, q_in = inside[i], inside[(i + 1) % len(points)]
      if p_in:
        out.append(p)
      if p_in != q_in:  # The edge p -> q crosses the boundary: keep the crossing point.
        t = (bound - p[axis]) / (q[axis] - p[axis])
        out.append(p + t * (q - p))
    points = np.array(out, np.float64).reshape(-1, 2)
  return points


def _polygon_area(points: np.ndarray) -> float:
  if len(points) < 3:
    return 0.0
  x, y = points[:, 0], points[:, 1]
  return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


class _BoxTrack:
  """One box carried through the ops: the visible part as a polygon in the current image's
  continuous pixel coordinates, and the area the whole box would have there (for the visible
  fraction; affine maps scale every area by |det|)."""

  def __init__(self, box: np.ndarray, width: int, height: int):
    x0, y0, x1, y1 = (float(v) for v in box)
    self.points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) * (width, height)
    self.full_area = (x1 - x0) * (y1 - y0) * width * height

  def apply(self, geometry) -> None:
    if geometry is None or len(self.points) == 0:
      return
    matrix, width, height = geometry
    self.points = self.points @ matrix[:, :2].T + matrix[:, 2]
    self.full_area *= abs(float(np.linalg.det(matrix[:, :2])))
    self.points = _clip_polygon(self.points, width, height)

  def result(self, size: int) -> np.ndarray | None:
    """The visible part's bounding box normalised to the size x size output, or None when less
    than MIN_BOX_VISIBLE_FRACTION of the box is left (or nothing with an area)."""
    area = _polygon_area(self.points)
    if self.full_area <= 0 or area < MIN_BOX_VISIBLE_FRACTION * self.full_area:
      return None
    lo = np.clip(self.points.min(axis=0) / size, 0.0, 1.0)
    hi = np.clip(self.points.max(axis=0) / size, 0.0, 1.0)
    box = np.array([lo[0], lo[1], hi[0], hi[1]], np.float32)
    return box if box[0] < box[2] and box[1] < box[3] else None


def make_augmenter(spec: Mapping[str, Any] | None, image_size: int) -> Augmenter:
  """Builds `augment(image, rng[, box=...])` -> uint8 [image_size, image_size, 3] from a spec.

  The returned function takes a decoded RGB uint8 image of any size (straight from
  `records.decode_image`) and a `np.random.Generator`; its output is a deterministic function of
  both. `spec=None` means `DEFAULT_SPEC` (flip + shift on `preprocess_eval`'s output, identical to
  `augment()`). Raises ValueError naming an unknown op or key, or a bad value.

  Called with `box=` (a record's box: [x0, y0, x1, y1] normalised to the input image, or None)
  it returns `(image, box)`: the same image, and the box moved with the pixels and normalised to
  the output square, or None when there was none or too little of it is left in the output (see
  the module docstring).
  """
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
      or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  size = int(image_size)
  p = parse_spec(spec)
  methods = p["resize_methods"]
  has_sizing = any(op in SIZING_OPS for op in p["ops"])

  # Each op: (image, rng) -> (image, geometry), geometry as described above.
  def op_letterbox(image: np.ndarray, rng: np.random.Generator):
    del rng
    if image.shape[0] == image.shape[1]:
      return image, None
    square = _Letterboxed(image)
    return square, (_scale_and_shift(1, 1, square.left, square.top), square.side, square.side)

  def op_rrc(image, rng: np.random.Generator):
    side_w, side_h = _frame(image)
    box = _rrc_box(rng, side_w, side_h, p["rrc_scale"], p["rrc_ratio"])
    method = _pick_method(rng, methods)
    left, right = _pixel_span(box[0], box[2], side_w)
    top, bottom = _pixel_span(box[1], box[3], side_h)
    if isinstance(image, _Letterboxed):
      window = image.window(top, bottom, left, right)
    else:
      window = image[top:bottom, left:right]
    sx, sy = size / (right - left), size / (bottom - top)
    geometry = (_scale_and_shift(sx, sy, -left * sx, -top * sy), size, size)
    if window.shape[:2] == (size, size):
      return np.array(window), geometry
    return resize(window, size, method), geometry

  def op_resize(image, rng: np.random.Generator):
    method = _pick_method(rng, methods)
    image = _materialise(image)
    height, width = image.shape[:2]
    if (height, width) == (size, size):
      return image, None
    return resize(image, size, method), (_scale_and_shift(size / width, size / height), size, size)

  def op_shift(image, rng: np.random.Generator):
    image = _materialise(image)
    offsets = _draw_shift(rng, image.shape[0], p["shift_fraction"])
    if offsets is None:
      return image, None
    top, left = offsets
    # Output pixel (r, c) is input pixel (r + top, c + left); edge replicas carry no box.
    height, width = image.shape[:2]
    return _shift_by(image, top, left), (_scale_and_shift(1, 1, -left, -top), width, height)

  def op_flip(image, rng: np.random.Generator):
    image = _materialise(image)
    if rng.random() >= p["flip_prob"]:
      return image, None
    height, width = image.shape[:2]
    return _flip(image), (_scale_and_shift(-1, 1, width, 0), width, height)

  def op_rotate(image, rng: np.random.Generator):
    image = _materialise(image)
    if p["rotate_prob"] < 1.0 and rng.random() >= p["rotate_prob"]:
      return image, None
    angle = rng.uniform(-p["rotate_deg"], p["rotate_deg"])
    if angle == 0.0:
      return image, None
    height, width = image.shape[:2]
    # Counter-clockwise about the image centre (pixel-centre coordinates), as PIL's rotate.
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    rotated = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=WHITE)
    return rotated, (_from_pixel_centres(matrix), width, height)

  def op_cutout(image, rng: np.random.Generator):
    image = _materialise(image)
    if rng.random() >= p["cutout_prob"]:
      return image, None
    # Erasing hides part of the object but moves nothing: the box stays (as cutout intends).
    return _cutout(image, rng, p["cutout_area"], p["cutout_ratio"], p["cutout_fill"]), None

  table = {"letterbox": op_letterbox, "rrc": op_rrc, "resize": op_resize, "shift": op_shift,
           "flip": op_flip, "rotate": op_rotate, "cutout": op_cutout}
  steps = tuple(table[op] for op in p["ops"])

  def eval_geometry(height: int, width: int) -> list:
    """`preprocess_eval`'s letterbox and resize as geometries (for specs without a sizing op)."""
    side, top, left = letterbox_offsets(height, width)
    return [(_scale_and_shift(1, 1, left, top), side, side),
            (_scale_and_shift(size / side, size / side), size, size)]

  def augmenter(image: np.ndarray, rng: np.random.Generator, box: Any = _NO_BOX):
    check_rgb(image)
    track = None
    if box is not _NO_BOX and box is not None:
      track = _BoxTrack(check_box(box, "augmenter box"), image.shape[1], image.shape[0])
    if any(s < 0 for s in image.strides):
      image = np.ascontiguousarray(image)  # OpenCV takes only positive strides
    if has_sizing:
      current = image
    else:
      current = preprocess_eval(image, size)
      if track is not None:
        for geometry in eval_geometry(*image.shape[:2]):
          track.apply(geometry)
    for step in steps:
      current, geometry = step(current, rng)
      if track is not None:
        track.apply(geometry)
    out = np.ascontiguousarray(_materialise(current))
    if np.may_share_memory(out, image):
      out = out.copy()  # e.g. "resize" of an image already at the size: never hand back the input
    if out.shape != (size, size, 3):  # Every op keeps the size it is given; this is a guard.
      raise AssertionError(f"augmenter produced {out.shape}, expected {(size, size, 3)}")
    if box is _NO_BOX:
      return out
    return out, (None if track is None else track.result(size))

  augmenter.spec = p  # type: ignore[attr-defined]  # the parsed spec, for logging
  return augmenter
