"""The training augmentation spec: which ops run, in which order, with which parameters, as
plain data a config carries (`config.data.augment_spec`). `parse_spec` validates a spec and fills
in defaults; `augment.make_augmenter` builds the per-example function from the parsed spec.

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

A record's box (one object per image) moves with the pixels through every op: letterbox, rrc,
resize, shift, flip and rotate move it, cutout leaves it where it is; see `augment` for how, and
for when a box cut away by a crop is dropped.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sw_zoo.data.preprocess import RESIZE_METHODS

OPS = ("letterbox", "rrc", "resize", "shift", "flip", "rotate", "cutout")
SIZING_OPS = ("rrc", "resize")
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
  sizing = [i for i, op in enumerate(ops) if op in SIZING_OPS]
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
