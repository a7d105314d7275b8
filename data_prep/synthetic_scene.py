"""What one synthetic image shows, and its true tags (the renderer behind data_prep.synthetic).

Every tag is a visible property that survives the training augmentation (horizontal flip and a
small translation): positions are described vertically only, objects are kept clear of the image
edges and of zone boundaries, object colours always contrast with the background, and size
classes are separated by gaps. The tags and how often each is drawn are in
data_prep/synthetic_tags.py.

`render_scene(rng, image_size)` is a pure function of the generator state;
`largest_object_box(scene)` is the box of its largest object, from the pixels it was painted on;
`object_contrast(scene, p)` is how far an object's colour stands from the background (what the
simulated annotator of data_prep/synthetic_noise.py misses more often when it is low).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_prep.synthetic_tags import (BACKGROUND_KINDS, BACKGROUND_P, CENTER_HALF_WIDTH,
                                      CHARACTER_P, CHARACTER_PROBABILITY, CHARACTER_TAGS, COLOR_P,
                                      COLORS, COUNT_TAGS, COUNT_WEIGHTS, GENERAL_TAGS, LOWER_MIN_Y,
                                      MAX_OBJECTS, MISC_PROBABILITIES, MONOCHROME_COLORS,
                                      PLAIN_BACKGROUNDS, POSITION_TAGS, RATING_TAGS, SHAPE_P, SHAPES,
                                      SIZE_RANGES, SIZE_TAGS, SIZE_WEIGHTS, UPPER_MAX_Y,
                                      ZONE_WEIGHTS)

# The vocabulary is imported from here by data_prep.synthetic.
__all__ = ["CHARACTER_TAGS", "GENERAL_TAGS", "RATING_TAGS", "Scene", "largest_object_box",
           "object_contrast", "rating_of", "render_scene"]

# Background colours for the pastel kinds.
PASTELS = ((190, 215, 245), (245, 200, 215), (200, 235, 200), (250, 240, 185), (220, 205, 240),
           (250, 220, 190), (195, 240, 240))
_EDGE_MARGIN = 0.05  # Objects stay this far from the image edge (the border frame sits there).
_OBJECT_GAP = 0.035  # Minimum gap between boxes of objects that must not overlap.

# ---------------------------------------------------------------------------------------------
# Geometry. Shapes are drawn from "layers": (rgb or None for the object colour, [ops]); an op is
# (kind, params, keep) in a unit box [-1, 1]^2 (y down), keep=False erases. Rendering happens at
# twice the output size and is box-downsampled, which antialiases PIL's hard-edged polygons.

_MIN_CONTRAST = 100.0  # Euclidean RGB distance an object colour keeps from the background.
_SUPERSAMPLE = 2  # Canvas side / output side (the box-downsampling factor above).


def _regular_polygon(sides: int, radius: float, phase: float) -> list[tuple[float, float]]:
  return [(radius * math.cos(phase + 2 * math.pi * k / sides),
           radius * math.sin(phase + 2 * math.pi * k / sides)) for k in range(sides)]


def _star_points(points: int, inner: float) -> list[tuple[float, float]]:
  out = []
  for k in range(2 * points):
    r = 1.0 if k % 2 == 0 else inner
    angle = -math.pi / 2 + math.pi * k / points
    out.append((r * math.cos(angle), r * math.sin(angle)))
  return out


def _heart_points() -> list[tuple[float, float]]:
  t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
  x, y = x / 17.0, (y + 2.5) / 14.5  # Centre and scale into the unit box.
  return list(zip(x.tolist(), y.tolist()))


_HEART = _heart_points()
_STAR = _star_points(5, 0.45)
_SPARKLE = _star_points(4, 0.22)
_CROSS = [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
          (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]
_ARROW = [(-1, -0.22), (0.15, -0.22), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.22),
          (-1, 0.22)]


def _rotate(points, angle: float):
  c, s = math.cos(angle), math.sin(angle)
  return [(c * x - s * y, s * x + c * y) for x, y in points]


def _shape_layers(shape: str, rng: np.random.Generator) -> list:
  """Ops for a plain shape in the object colour (None)."""
  tilt = float(rng.uniform(-0.2, 0.2))  # A slight rotation; never enough to turn a square
  #                                        into a diamond.
  if shape == "circle":
    ops = [("ellipse", (-1, -1, 1, 1), True)]
  elif shape == "ring":
    ops = [("ellipse", (-1, -1, 1, 1), True), ("ellipse", (-0.62, -0.62, 0.62, 0.62), False)]
  elif shape == "square":
    ops = [("polygon", _rotate([(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)], tilt), True)]
  elif shape == "triangle":
    ops = [("polygon", _rotate([(0, -1), (1, 0.8), (-1, 0.8)], tilt), True)]
  elif shape == "star":
    ops = [("polygon", _rotate(_STAR, tilt), True)]
  elif shape == "heart":
    ops = [("polygon", _HEART, True)]
  elif shape == "cross":
    ops = [("polygon", _rotate(_CROSS, tilt), True)]
  elif shape == "diamond_(shape)":
    ops = [("polygon", [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], True)]
  elif shape == "hexagon":
    ops = [("polygon", _regular_polygon(6, 1.0, math.pi / 6 + tilt), True)]
  elif shape == "arrow_(symbol)":
    ops = [("polygon", _rotate(_ARROW, math.pi / 2 * int(rng.integers(4))), True)]
  elif shape == "crescent":
    angle = float(rng.uniform(0, 2 * math.pi))
    dx, dy = 0.5 * math.cos(angle), 0.5 * math.sin(angle)
    ops = [("ellipse", (-1, -1, 1, 1), True),
           ("ellipse", (dx - 0.85, dy - 0.85, dx + 0.85, dy + 0.85), False)]
  elif shape == "semicircle":
    ops = [("pieslice", (-1, -0.5, 1, 1.5, 180, 360), True)]
  else:
    raise ValueError(f"unknown shape {shape!r}")
  return [(None, ops)]


# Composite motifs ("characters"): fixed colours; the first colour is the dominant one used for
# the background-contrast check.
_CHARACTER_LAYERS = {
    "smiley_face": [((250, 210, 30), [("ellipse", (-1, -1, 1, 1), True)]),
                    ((20, 20, 20), [("ellipse", (-0.45, -0.5, -0.17, -0.1), True),
                                    ("ellipse", (0.17, -0.5, 0.45, -0.1), True),
                                    ("arc", (-0.6, -0.55, 0.6, 0.62, 20, 160, 0.12), True)])],
    "house": [((225, 190, 140), [("rect", (-0.75, -0.1, 0.75, 1), True)]),
              ((175, 40, 40), [("polygon", [(-1, -0.05), (1, -0.05), (0, -1)], True)]),
              ((90, 55, 25), [("rect", (-0.18, 0.4, 0.18, 1), True)])],
    "tree": [((40, 150, 50), [("ellipse", (-0.8, -1, 0.8, 0.45), True)]),
             ((120, 75, 35), [("rect", (-0.17, 0.3, 0.17, 1), True)])],
    "flower": [((250, 130, 200), [
                   ("ellipse", (0.38 * math.cos(a) - 0.3, -0.35 + 0.38 * math.sin(a) - 0.3,
                                0.38 * math.cos(a) + 0.3, -0.35 + 0.38 * math.sin(a) + 0.3), True)
                   for a in np.linspace(0, 2 * math.pi, 5, endpoint=False) - math.pi / 2]),
               ((40, 150, 50), [("rect", (-0.07, 0.15, 0.07, 1), True)]),
               ((250, 215, 30), [("ellipse", (-0.24, -0.59, 0.24, -0.11), True)])],
    # A dark rim (drawn first, slightly larger) keeps the snowman visible on white.
    "snowman": [((60, 70, 95), [("ellipse", (-0.76, -0.16, 0.76, 1), True),
                                ("ellipse", (-0.51, -1, 0.51, -0.04), True)]),
                ((245, 245, 245), [("ellipse", (-0.7, -0.1, 0.7, 0.94), True),
                                   ("ellipse", (-0.45, -0.94, 0.45, -0.1), True)]),
                ((20, 20, 20), [("ellipse", (-0.22, -0.7, -0.08, -0.56), True),
                                ("ellipse", (0.08, -0.7, 0.22, -0.56), True)]),
                ((255, 130, 0), [("polygon", [(-0.06, -0.5), (0.06, -0.5), (0.4, -0.4)],
                                  True)])],
    "traffic_light": [((45, 45, 45), [("rect", (-0.4, -1, 0.4, 1), True)]),
                      ((230, 30, 30), [("ellipse", (-0.26, -0.85, 0.26, -0.33), True)]),
                      ((250, 200, 0), [("ellipse", (-0.26, -0.26, 0.26, 0.26), True)]),
                      ((30, 190, 60), [("ellipse", (-0.26, 0.33, 0.26, 0.85), True)])],
}


class _Object(NamedTuple):
  kind: str        # Shape name or character tag.
  is_character: bool
  color: str | None  # Colour name for plain shapes.
  size_tag: str
  side: float      # Box side as a fraction of the image side.
  cx: float
  cy: float
  zone: str
  layers: list


def _distance(a, b) -> float:
  return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _contrasts(rgb, references) -> bool:
  return all(_distance(rgb, ref) >= _MIN_CONTRAST for ref in references)


def _to_grey(rgb) -> tuple[int, int, int]:
  value = int(round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]))
  return (value, value, value)


# ---------------------------------------------------------------------------------------------
# Backgrounds, rendered with numpy at canvas resolution. Each returns (image, reference colours)
# where the references are what object colours must contrast with.

def _background(kind: str, rng: np.random.Generator, side: int):
  yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
  pastel = lambda: np.array(PASTELS[int(rng.integers(len(PASTELS)))], np.float32)  # noqa: E731
  if kind == "white_background":
    c = np.float32(rng.integers(246, 256))
    return np.full((side, side, 3), c, np.uint8), [(c, c, c)]
  if kind == "black_background":
    c = np.float32(rng.integers(0, 20))
    return np.full((side, side, 3), c, np.uint8), [(c, c, c)]
  if kind == "grey_background":
    c = np.float32(rng.integers(112, 146))
    return np.full((side, side, 3), c, np.uint8), [(c, c, c)]
  if kind == "colored_background":
    c = pastel()
    return np.broadcast_to(c.astype(np.uint8), (side, side, 3)).copy(), [tuple(c)]
  # Directions are symmetric under a horizontal flip only as a set, which is all tags need.
  direction = int(rng.integers(3))
  coord = (yy, xx, (xx + yy) / 2)[direction]
  if kind == "gradient_background":
    c0, c1 = pastel(), pastel()
    if _distance(c0, c1) < 40:  # Two equal pastels would make a plain background.
      c1 = np.full(3, 255.0 if c0.mean() < 200 else 120.0, np.float32)
    t = coord[..., None]
    return (c0 * (1 - t) + c1 * t).astype(np.uint8), [tuple(c0), tuple(c1)]
  if kind == "striped_background":
    c0 = pastel()
    c1 = c0 * 0.78
    period = float(rng.uniform(0.08, 0.14))
    stripes = (np.floor(coord / (period / 2)) % 2).astype(bool)
    image = np.where(stripes[..., None], c1, c0).astype(np.uint8)
    return image, [tuple(c0), tuple(c1)]
  if kind == "checkered_background":
    c0, c1 = pastel(), pastel() * 0.82
    cell = float(rng.uniform(0.08, 0.12))
    checks = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(bool)
    return np.where(checks[..., None], c1, c0).astype(np.uint8), [tuple(c0), tuple(c1)]
  if kind == "polka_dot_background":
    c0 = pastel()
    c1 = np.full(3, 255.0, np.float32) if c0.mean() < 225 else c0 * 0.75
    spacing = float(rng.uniform(0.09, 0.12))
    row = np.floor(yy / spacing)
    dx = (xx + (row % 2) * spacing / 2) % spacing - spacing / 2
    dy = yy % spacing - spacing / 2
    dots = dx * dx + dy * dy < (0.22 * spacing) ** 2
    return np.where(dots[..., None], c1, c0).astype(np.uint8), [tuple(c0), tuple(c1)]
  if kind == "noisy_background":
    c0 = pastel() * np.float32(rng.uniform(0.75, 1.0))
    noise = rng.standard_normal((side, side, 3), dtype=np.float32) * 42
    return np.clip(c0 + noise, 0, 255).astype(np.uint8), [tuple(c0)]
  raise ValueError(f"unknown background {kind!r}")


# ---------------------------------------------------------------------------------------------
# Rendering of objects onto the canvas (numpy), via per-object local masks.

def _layer_masks(layers, box_px: int) -> list[np.ndarray]:
  """Rasterises each layer's ops into a bool mask of shape [box_px, box_px]."""
  half = box_px / 2.0
  to_px = lambda x, y: (half + x * half, half + y * half)  # noqa: E731
  masks = []
  for _, ops in layers:
    image = Image.new("L", (box_px, box_px), 0)
    draw = ImageDraw.Draw(image)
    for kind, params, keep in ops:
      fill = 255 if keep else 0
      if kind == "polygon":
        draw.polygon([to_px(x, y) for x, y in params], fill=fill)
      elif kind in ("ellipse", "rect"):
        x0, y0 = to_px(params[0], params[1])
        x1, y1 = to_px(params[2], params[3])
        (draw.ellipse if kind == "ellipse" else draw.rectangle)((x0, y0, x1, y1), fill=fill)
      elif kind == "pieslice":
        x0, y0 = to_px(params[0], params[1])
        x1, y1 = to_px(params[2], params[3])
        draw.pieslice((x0, y0, x1, y1), params[4], params[5], fill=fill)
      elif kind == "arc":
        x0, y0 = to_px(params[0], params[1])
        x1, y1 = to_px(params[2], params[3])
        draw.arc((x0, y0, x1, y1), params[4], params[5], fill=fill,
                 width=max(1, int(params[6] * half)))
      else:
        raise ValueError(f"unknown op {kind!r}")
    masks.append(np.asarray(image) > 127)
  return masks


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """Square binary dilation by `radius` pixels (separable running max)."""
  out = np.pad(mask, radius)
  for axis in (0, 1):
    acc = out.copy()
    for shift in range(1, radius + 1):
      acc[tuple(slice(shift, None) if a == axis else slice(None) for a in range(2))] |= \
          out[tuple(slice(None, -shift) if a == axis else slice(None) for a in range(2))]
      acc[tuple(slice(None, -shift) if a == axis else slice(None) for a in range(2))] |= \
          out[tuple(slice(shift, None) if a == axis else slice(None) for a in range(2))]
    out = acc
  return out


class _Placed(NamedTuple):
  obj: _Object
  x0: int  # Canvas pixel of the local box's top-left corner.
  y0: int
  masks: list  # One bool mask per layer.
  union: np.ndarray


def _place_pixels(obj: _Object, canvas_side: int) -> _Placed:
  box_px = max(4, int(round(obj.side * canvas_side)))
  masks = _layer_masks(obj.layers, box_px)
  union = np.logical_or.reduce(masks)
  x0 = int(round(obj.cx * canvas_side - box_px / 2))
  y0 = int(round(obj.cy * canvas_side - box_px / 2))
  return _Placed(obj, x0, y0, masks, union)


def _paint(canvas: np.ndarray, x0: int, y0: int, mask: np.ndarray, rgb) -> None:
  """canvas[mask] = rgb for a local mask whose top-left corner is at (x0, y0); clips."""
  h, w = mask.shape
  cy0, cx0 = max(y0, 0), max(x0, 0)
  cy1, cx1 = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
  if cy0 >= cy1 or cx0 >= cx1:
    return
  local = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
  region = canvas[cy0:cy1, cx0:cx1]
  if callable(rgb):
    region[local] = rgb(region[local])
  else:
    region[local] = rgb


def _overlap_fraction(a: _Placed, b: _Placed) -> float:
  """Overlapping pixels as a fraction of the smaller object's area."""
  h_a, w_a = a.union.shape
  h_b, w_b = b.union.shape
  y0, x0 = max(a.y0, b.y0), max(a.x0, b.x0)
  y1, x1 = min(a.y0 + h_a, b.y0 + h_b), min(a.x0 + w_a, b.x0 + w_b)
  if y0 >= y1 or x0 >= x1:
    return 0.0
  inter = np.count_nonzero(a.union[y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
                           & b.union[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0])
  return inter / max(1, min(np.count_nonzero(a.union), np.count_nonzero(b.union)))


# ---------------------------------------------------------------------------------------------
# Scene sampling.

def _zone_of(cx: float, cy: float) -> str | None:
  if abs(cx - 0.5) <= CENTER_HALF_WIDTH and abs(cy - 0.5) <= CENTER_HALF_WIDTH:
    return "centered_object"
  if cy <= UPPER_MAX_Y:
    return "upper_object"
  if cy >= LOWER_MIN_Y:
    return "lower_object"
  return None


def _sample_centre(zone: str, side: float, rng: np.random.Generator):
  lo, hi = _EDGE_MARGIN + side / 2, 1 - _EDGE_MARGIN - side / 2
  if zone == "centered_object":
    return tuple(0.5 + rng.uniform(-CENTER_HALF_WIDTH, CENTER_HALF_WIDTH, size=2))
  y_lo, y_hi = (lo, UPPER_MAX_Y) if zone == "upper_object" else (LOWER_MIN_Y, hi)
  if y_lo > y_hi:
    return None
  return float(rng.uniform(lo, hi)), float(rng.uniform(y_lo, y_hi))


def _boxes_apart(a: _Object, b: _Object) -> bool:
  reach = (a.side + b.side) / 2 + _OBJECT_GAP
  return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _in_bounds(cx: float, cy: float, side: float) -> bool:
  lo, hi = _EDGE_MARGIN + side / 2, 1 - _EDGE_MARGIN - side / 2
  return lo <= cx <= hi and lo <= cy <= hi


def _choose_color(rng, references, allowed: tuple[str, ...], grey: bool) -> str | None:
  names = [n for n in COLORS if n in allowed]
  p = np.array([COLOR_P[list(COLORS).index(n)] for n in names])
  ok = [_contrasts(_to_grey(COLORS[n]) if grey else COLORS[n], references) for n in names]
  p = p * np.array(ok, dtype=np.float64)
  if p.sum() == 0:
    return None
  return names[int(rng.choice(len(names), p=p / p.sum()))]


def _place_object(rng, kind, is_character, color, layers, size_index, placed, overlap_with,
                  canvas_side) -> _Placed | None:
  """Finds a position for one object by rejection sampling; None if the image is too crowded.

  Without `overlap_with`, the object's box keeps `_OBJECT_GAP` from every other box. With it,
  the object is put on top of `overlap_with`, covering at least 12% of the smaller one, and
  kept apart from all others. Sizes fall back to smaller classes when nothing fits.
  """
  for size_tag in SIZE_TAGS[size_index::-1]:
    for _ in range(40):
      side = float(rng.uniform(*SIZE_RANGES[size_tag]))
      if overlap_with is not None:
        other = overlap_with.obj
        angle = float(rng.uniform(0, 2 * math.pi))
        dist = float(rng.uniform(0.3, 0.55)) * (other.side + side) / 2
        cx, cy = other.cx + dist * math.cos(angle), other.cy + dist * math.sin(angle)
        zone = _zone_of(cx, cy)
        if zone is None or not _in_bounds(cx, cy, side):
          continue
      else:
        zone = POSITION_TAGS[int(rng.choice(3, p=ZONE_WEIGHTS))]
        centre = _sample_centre(zone, side, rng)
        if centre is None:
          continue
        cx, cy = centre
      obj = _Object(kind, is_character, color, size_tag, side, float(cx), float(cy), zone,
                    layers)
      if not all(_boxes_apart(obj, p.obj) for p in placed if p is not overlap_with):
        continue
      candidate = _place_pixels(obj, canvas_side)
      if overlap_with is not None and _overlap_fraction(candidate, overlap_with) < 0.12:
        continue
      return candidate
  return None


class Scene(NamedTuple):
  background: str
  placed: list[_Placed]
  tags: set[str]
  image: np.ndarray  # Final uint8 RGB [image_size, image_size, 3].
  # The background colours object colours were chosen to contrast with (greyed when monochrome).
  references: tuple = ()
  monochrome: bool = False


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=size)


# ---------------------------------------------------------------------------------------------
# Rendering, step by step. Every step draws from `rng` in a fixed order, so a scene is a pure
# function of the generator state; steps that draw something add its tags to `tags`.

def _contrasting_ink(references, extra=()):
  """Black or white, whichever stands out more against the background (and `extra`)."""
  candidates = ((18, 18, 18), (245, 245, 245))
  score = lambda c: min(_distance(c, r) for r in list(references) + list(extra))  # noqa
  return max(candidates, key=score)


class _Backdrop(NamedTuple):
  kind: str
  canvas: np.ndarray  # uint8 RGB at canvas resolution; later steps paint on it in place.
  references: list  # Colours objects must contrast with (greyed for a monochrome image).
  monochrome: bool


def _draw_background(rng: np.random.Generator, canvas_side: int, tags: set[str]) -> _Backdrop:
  monochrome = rng.random() < MISC_PROBABILITIES["monochrome"]
  background_p = BACKGROUND_P.copy()
  if monochrome:  # A grey image cannot show a coloured background.
    background_p[BACKGROUND_KINDS.index("colored_background")] = 0
    background_p /= background_p.sum()
  background = BACKGROUND_KINDS[int(rng.choice(len(BACKGROUND_KINDS), p=background_p))]
  canvas, references = _background(background, rng, canvas_side)
  if monochrome:
    references = [_to_grey(r) for r in references]
    tags |= {"monochrome", "greyscale"}
  tags.add(background)
  if background in PLAIN_BACKGROUNDS:
    tags.add("simple_background")
  return _Backdrop(background, canvas, references, monochrome)


def _draw_border(rng: np.random.Generator, backdrop: _Backdrop, tags: set[str]) -> None:
  """A frame inside the edge margin objects keep clear of."""
  if rng.random() < MISC_PROBABILITIES["border"]:
    canvas = backdrop.canvas
    width = max(2, int(round(0.03 * canvas.shape[0])))
    ink = _contrasting_ink(backdrop.references)
    canvas[:width], canvas[-width:] = ink, ink
    canvas[:, :width], canvas[:, -width:] = ink, ink
    tags.add("border")


class _ObjectPlan(NamedTuple):
  num_objects: int
  want_overlap: bool
  want_outline: bool
  want_shadow: bool
  character: str | None  # Drawn as the first object.


def _plan_objects(rng: np.random.Generator, backdrop: _Backdrop) -> _ObjectPlan:
  """How many objects, which optional effects, and whether one is a character."""
  dark_background = np.mean(backdrop.references) < 80
  num_objects = int(rng.choice(MAX_OBJECTS, p=COUNT_WEIGHTS)) + 1
  want_overlap = num_objects >= 2 and rng.random() < MISC_PROBABILITIES["overlapping_objects"]
  want_outline = rng.random() < MISC_PROBABILITIES["outline"]
  want_shadow = (not dark_background) and rng.random() < MISC_PROBABILITIES["drop_shadow"]
  character = None
  if rng.random() < CHARACTER_PROBABILITY:
    candidates = [c for c in CHARACTER_TAGS
                  if _contrasts(_CHARACTER_LAYERS[c][0][0], backdrop.references)
                  and not backdrop.monochrome]
    if candidates:
      p = np.array([CHARACTER_P[CHARACTER_TAGS.index(c)] for c in candidates])
      character = candidates[int(rng.choice(len(candidates), p=p / p.sum()))]
  return _ObjectPlan(num_objects, want_overlap, want_outline, want_shadow, character)


def _place_objects(rng: np.random.Generator, plan: _ObjectPlan,
                   backdrop: _Backdrop) -> tuple[list[_Placed], bool]:
  """Chooses and positions the objects; -> (placed objects, whether an overlap was staged)."""
  canvas_side = backdrop.canvas.shape[0]
  allowed_colors = MONOCHROME_COLORS if backdrop.monochrome else tuple(COLORS)
  placed: list[_Placed] = []
  overlapped = False
  for k in range(plan.num_objects):
    is_character = k == 0 and plan.character is not None
    if is_character:
      kind, color, layers = plan.character, None, _CHARACTER_LAYERS[plan.character]
      size_p = np.array([0.0, 0.5, 0.5])
    else:
      kind = SHAPES[int(rng.choice(len(SHAPES), p=SHAPE_P))]
      color = _choose_color(rng, backdrop.references, allowed_colors, backdrop.monochrome)
      if color is None:
        continue
      layers = _shape_layers(kind, rng)
      size_p = np.array(SIZE_WEIGHTS[plan.num_objects])
    size_index = int(rng.choice(3, p=size_p / size_p.sum()))
    # Overlap is staged between the second object and the first; if that cannot be arranged
    # the object is placed normally and the image is simply not tagged overlapping.
    stage_overlap = plan.want_overlap and k == 1 and bool(placed)
    done = None
    for overlap_with in ([placed[0], None] if stage_overlap else [None]):
      done = _place_object(rng, kind, is_character, color, layers, size_index, placed,
                           overlap_with, canvas_side)
      if done is not None:
        placed.append(done)
        overlapped |= overlap_with is not None
        break
  return placed, overlapped


def _paint_objects(rng: np.random.Generator, plan: _ObjectPlan, backdrop: _Backdrop,
                   placed: list[_Placed]) -> tuple[bool, bool]:
  """Paints each object's shadow, outline, then fill layers; -> (outlined, shadowed)."""
  canvas, references = backdrop.canvas, backdrop.references
  outline_px = max(2, int(round(0.022 * canvas.shape[0])))
  shadow_px = max(2, int(round(0.03 * canvas.shape[0])))
  outlined = shadowed = False
  for p in placed:
    obj = p.obj
    fill = (COLORS[obj.color] if obj.color else None)
    if plan.want_shadow:
      _paint(canvas, p.x0 + shadow_px, p.y0 + shadow_px, p.union,
             lambda px: (px.astype(np.uint16) * 5 // 10).astype(np.uint8))
      shadowed = True
    if plan.want_outline and not obj.is_character:
      ink = _contrasting_ink(references, extra=[fill])
      if _contrasts(ink, [fill]) and _contrasts(ink, references):
        _paint(canvas, p.x0 - outline_px, p.y0 - outline_px, _dilate(p.union, outline_px), ink)
        outlined = True
    for (layer_rgb, _), mask in zip(obj.layers, p.masks):
      rgb = layer_rgb if layer_rgb is not None else fill
      jitter = rng.integers(-8, 9, size=3) if layer_rgb is None else 0
      _paint(canvas, p.x0, p.y0, mask, np.clip(np.add(rgb, jitter), 0, 255).astype(np.uint8))
  return outlined, shadowed


def _draw_sparkles(rng: np.random.Generator, backdrop: _Backdrop, placed: list[_Placed],
                   tags: set[str]) -> None:
  """Tiny four-point glints in free space."""
  if rng.random() >= MISC_PROBABILITIES["sparkle"]:
    return
  canvas, references = backdrop.canvas, backdrop.references
  ink = max(((255, 255, 255), (255, 205, 0)),
            key=lambda c: min(_distance(c, r) for r in references))
  placed_sparkles = []
  for _ in range(int(rng.integers(3, 7))):
    for _ in range(20):
      side = float(rng.uniform(0.05, 0.07))
      cx, cy = rng.uniform(_EDGE_MARGIN + side / 2, 1 - _EDGE_MARGIN - side / 2, size=2)
      spark = _Object("sparkle", False, None, "", side, float(cx), float(cy), "",
                      [(ink, [("polygon", _SPARKLE, True)])])
      if all(_boxes_apart(spark, q.obj) for q in placed + placed_sparkles):
        sp = _place_pixels(spark, canvas.shape[0])
        _paint(canvas, sp.x0, sp.y0, sp.union, ink)
        placed_sparkles.append(sp)
        break
  if placed_sparkles:
    tags.add("sparkle")


def _draw_text(rng: np.random.Generator, backdrop: _Backdrop, tags: set[str]) -> Image.Image:
  """The canvas as an image, with a signature in the corner and a watermark across it at times."""
  image = Image.fromarray(backdrop.canvas)
  canvas_side = backdrop.canvas.shape[0]
  ink = _contrasting_ink(backdrop.references)
  if rng.random() < MISC_PROBABILITIES["signature"]:
    letters = "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, rng.integers(4, 8)))
    draw = ImageDraw.Draw(image)
    draw.text((canvas_side * 0.94, canvas_side * 0.94), letters, fill=ink,
              font=_font(max(8, int(0.085 * canvas_side))), anchor="rs")
    tags.add("signature")
  if rng.random() < MISC_PROBABILITIES["watermark"]:
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    word = ("SAMPLE", "PREVIEW", "sw_zoo")[int(rng.integers(3))]
    ImageDraw.Draw(overlay).text((canvas_side / 2, canvas_side / 2), word, fill=ink + (120,),
                                 font=_font(max(8, int(0.17 * canvas_side))), anchor="mm")
    image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    tags.add("watermark")
  return image


def _object_tags(placed: list[_Placed], overlapped: bool, outlined: bool,
                 shadowed: bool) -> set[str]:
  """The tags of the objects actually drawn (not of those that did not fit)."""
  tags = set()
  if placed:
    tags.add(COUNT_TAGS[len(placed) - 1])
  for p in placed:
    tags.add(p.obj.size_tag)
    tags.add(p.obj.zone)
    tags.add(p.obj.kind)
    if not p.obj.is_character:
      tags.add(f"{p.obj.color}_object")
  if overlapped:
    tags.add("overlapping_objects")
  if outlined:
    tags.add("outline")
  if shadowed and placed:
    tags.add("drop_shadow")
  return tags


def render_scene(rng: np.random.Generator, image_size: int) -> Scene:
  """Draws one image and returns it with its true tags (everything but the rating)."""
  tags: set[str] = set()
  backdrop = _draw_background(rng, _SUPERSAMPLE * image_size, tags)  # See "Geometry" above.
  _draw_border(rng, backdrop, tags)
  plan = _plan_objects(rng, backdrop)
  placed, overlapped = _place_objects(rng, plan, backdrop)
  outlined, shadowed = _paint_objects(rng, plan, backdrop, placed)
  _draw_sparkles(rng, backdrop, placed, tags)
  image = _draw_text(rng, backdrop, tags)
  image = image.reduce(_SUPERSAMPLE)  # 2x2 box filter: the antialiasing step.
  if backdrop.monochrome:
    image = image.convert("L").convert("RGB")
  tags |= _object_tags(placed, overlapped, outlined, shadowed)
  return Scene(backdrop.kind, placed, tags, np.asarray(image),
               tuple(tuple(float(v) for v in r) for r in backdrop.references), backdrop.monochrome)


def largest_object_box(scene: Scene) -> tuple[float, float, float, float] | None:
  """(x0, y0, x1, y1) normalised to the image: the tight box of the fill pixels (all layers, not
  outline or shadow) painted for the object with the most of them, or None for an image without
  objects. Exact at canvas resolution, so the box edges are where painted pixels start and stop
  (the 2x downsampling turns those into half-covered output pixels at most). Objects are kept
  inside the image, but the mask is clipped to the canvas all the same, as `_paint` clips."""
  canvas_side = _SUPERSAMPLE * scene.image.shape[0]
  best, best_area = None, 0
  for p in scene.placed:
    h, w = p.union.shape
    top, left = max(p.y0, 0), max(p.x0, 0)
    visible = p.union[top - p.y0:min(p.y0 + h, canvas_side) - p.y0,
                      left - p.x0:min(p.x0 + w, canvas_side) - p.x0]
    area = int(np.count_nonzero(visible))
    if area > best_area:  # Strictly larger: ties go to the object painted first.
      rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
      best, best_area = (left + cols[0], top + rows[0], left + cols[-1] + 1,
                         top + rows[-1] + 1), area
  if best is None:
    return None
  return tuple(float(v) / canvas_side for v in best)


def object_contrast(scene: Scene, p: _Placed) -> float:
  """Euclidean RGB distance from the object's colour (a character's dominant colour; greyed in a
  monochrome image) to the nearest background reference colour: >= 100 by construction for
  shapes and characters, up to ~440 for black on white."""
  rgb = COLORS[p.obj.color] if p.obj.color else _CHARACTER_LAYERS[p.obj.kind][0][0]
  if scene.monochrome:
    rgb = _to_grey(rgb)
  return min((_distance(rgb, r) for r in scene.references), default=_MIN_CONTRAST)


def rating_of(scene: Scene) -> str:
  """The rating, from two visible cues: any red or pink object, and a black background."""
  warm = any(p.obj.color in ("red", "pink") for p in scene.placed)
  dark = scene.background == "black_background"
  return RATING_TAGS[int(warm) + 2 * int(dark)]
