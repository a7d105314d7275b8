"""Bounding boxes from sources: parsing what a manifest row or a sidecar file says, and turning
it into the record's normalised `box` (sw_zoo.data.records).

A box is x0, y0, x1, y1: left, top, right, bottom edges of one object, in the image as it is
displayed (EXIF orientation applied, which is also how sw_zoo stores it), either

    normalised  fractions of the image's width and height, 0 <= x0 < x1 <= 1 (the default)
    pixels      pixel edges, 0 <= x0 < x1 <= width; normalised by the image's size, read from
                its header when the image is converted

Pixel boxes may reach up to `PIXEL_SLACK` pixels past an edge (annotation tools round outwards);
that part is clipped. Anything further out, reversed or empty boxes, non-numbers and partly
filled rows are bad input: the item is skipped with reason `bad_box` and listed in report.json
with the file and row, like other bad rows.

Sidecar box files (folder sources, `--box-ext`) hold one box, either as four numbers separated
by spaces or commas (`12 30 200 180`) or as JSON: `[12, 30, 200, 180]` or
`{"x0": 12, "y0": 30, "x1": 200, "y1": 180}`. An empty file means the image has no box.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from typing import Any, Sequence

from PIL import ExifTags, Image

from sw_zoo.data.records import check_box

BOX_UNITS = ("normalised", "pixels")
_UNIT_ALIASES = {"normalised": "normalised", "normalized": "normalised", "pixels": "pixels"}
BOX_KEYS = ("x0", "y0", "x1", "y1")
PIXEL_SLACK = 1.0
_NORMALISED_SLACK = 1e-6  # Printing floats (e.g. 1.0000001) must not turn a box into an error.
# EXIF orientations that turn the stored width into the displayed height.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)

Box = tuple[float, float, float, float]


def check_units(units: str) -> str:
  """'normalised' or 'pixels' ('normalized' accepted); ValueError otherwise."""
  try:
    return _UNIT_ALIASES[str(units).strip().lower()]
  except KeyError:
    raise ValueError(f"box units must be one of {BOX_UNITS}, got {units!r}") from None


def _number(value: Any, key: str) -> float:
  if isinstance(value, bool):
    raise ValueError(f"box {key} must be a number, got {value!r}")
  try:
    number = float(value.strip() if isinstance(value, str) else value)
  except (TypeError, ValueError):
    raise ValueError(f"box {key} must be a number, got {value!r}") from None
  if not math.isfinite(number):
    raise ValueError(f"box {key} must be finite, got {value!r}")
  return number


def _is_blank(value: Any) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


def parse_values(values: Sequence[Any], units: str) -> Box | None:
  """Four raw values (x0, y0, x1, y1: strings from a CSV, numbers from JSON) -> a box, or None
  when all four are blank (the item has no box). ValueError for anything else that is not a
  plausible box in `units` (a normalised box is fully checked here; a pixel box's right and
  bottom edges only once the image size is known, `to_normalised`)."""
  if all(_is_blank(v) for v in values):
    return None
  missing = [k for k, v in zip(BOX_KEYS, values) if _is_blank(v)]
  if missing:
    raise ValueError(f"box has {', '.join(missing)} empty but not the other coordinates")
  box = tuple(_number(v, k) for k, v in zip(BOX_KEYS, values))
  x0, y0, x1, y1 = box
  if not (x0 < x1 and y0 < y1):
    raise ValueError(f"box {list(box)} must have x0 < x1 and y0 < y1 (left, top, right, bottom)")
  units = check_units(units)
  if units == "normalised":
    _normalised(box, 1.0, 1.0, _NORMALISED_SLACK, "normalised")
  elif min(box) < -PIXEL_SLACK:
    raise ValueError(f"pixel box {list(box)} has a negative coordinate")
  return box


def parse_box_text(text: str, units: str) -> Box | None:
  """A sidecar box file's text (module docstring) -> a box, or None when it is empty."""
  stripped = text.strip()
  if not stripped:
    return None
  if stripped[0] in "[{":
    try:
      value = json.loads(stripped)
    except json.JSONDecodeError as e:
      raise ValueError(f"box file is not valid JSON: {e}") from None
    if isinstance(value, dict):
      unknown = sorted(set(value) - set(BOX_KEYS))
      if unknown or len(value) != 4:
        raise ValueError(f"box JSON object must have exactly the keys {list(BOX_KEYS)}, got "
                         f"{sorted(value)}")
      values = [value[k] for k in BOX_KEYS]
    elif isinstance(value, list):
      values = value
    else:
      raise ValueError("box JSON must be a list [x0, y0, x1, y1] or an object")
  else:
    values = [v for v in re.split(r"[\s,]+", stripped) if v]
  if len(values) != 4:
    raise ValueError(f"box must be 4 numbers x0 y0 x1 y1, got {len(values)} values")
  if any(_is_blank(v) for v in values):
    raise ValueError("box JSON must not hold null or empty coordinates")
  return parse_values(values, units)


def _normalised(box: Box, width: float, height: float, slack: float, units: str) -> list[float]:
  """`box` divided by (width, height), clipped where it is at most `slack` outside."""
  x0, y0, x1, y1 = box
  limits = (width, height, width, height)
  if any(v < -slack or v > limit + slack for v, limit in zip(box, limits)):
    size = "[0, 1]" if units == "normalised" else f"the {int(width)}x{int(height)} image"
    raise ValueError(f"{units} box {list(box)} lies outside {size}")
  out = [min(max(v, 0.0), limit) / limit for v, limit in zip(box, limits)]
  check_box(out, f"{units} box {list(box)}")  # e.g. a box that is empty once clipped
  return out


def oriented_size(image: bytes | str | os.PathLike) -> tuple[int, int]:
  """(width, height) of an image as displayed (EXIF orientation applied), from its header only."""
  source = io.BytesIO(image) if isinstance(image, (bytes, bytearray, memoryview)) else image
  with Image.open(source) as opened:
    width, height = opened.size
    orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
  return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def to_normalised(box: Box, units: str, image: bytes | str | os.PathLike) -> list[float]:
  """A parsed box -> the record's [x0, y0, x1, y1] in [0, 1]; reads the image's size for pixel
  boxes. ValueError for a box outside the image."""
  if check_units(units) == "normalised":
    return _normalised(box, 1.0, 1.0, _NORMALISED_SLACK, "normalised")
  width, height = oriented_size(image)
  return _normalised(box, float(width), float(height), PIXEL_SLACK, "pixels")
