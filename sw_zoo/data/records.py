"""The one on-disk record schema for sw_zoo datasets, and image decoding.

Every shard record is a msgpack map:

    {"schema_version": 1, "id": int, "image": bytes, "labels": [int, ...],
     "dropped": [int, ...], "source": str[, "box": [x0, y0, x1, y1]]}

`labels` and `dropped` are row indices into the dataset's `selected_tags.csv`, sorted and
unique. `dropped` lists tags a generator deliberately removed from `labels` to simulate missing
labels (so experiments can measure recovery); it is empty for real data. msgpack (not pickle)
keeps records safe to load from strangers and readable from any language.

`box` (optional) is one object's bounding box as four floats relative to the original image's
width and height, as displayed (x right, y down, edges not pixel centres; storing the image
downscaled with its aspect kept leaves these unchanged): 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1. Records without a box do not hold the key at all, so they are byte-identical
to records written before boxes existed; that is why an optional key does not change
`SCHEMA_VERSION`. The values are stored as float32-representable doubles, so what `decode_record`
returns (float32) is exactly what was validated.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import msgpack
import numpy as np
import simplejpeg
from PIL import Image

SCHEMA_VERSION = 1

_REQUIRED_KEYS = ("schema_version", "id", "image", "labels")
_OPTIONAL_KEYS = ("dropped", "source", "box")
_JPEG_MAGIC = b"\xff\xd8\xff"


def _normalize_indices(value: Any, key: str) -> list[int]:
  """Label indices as a sorted, unique list of non-negative Python ints."""
  array = np.asarray(value)
  if array.size == 0:
    return []
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"record key {key!r} must be a 1-D array of integer label indices, "
                     f"got dtype {array.dtype} shape {array.shape}")
  if array.min() < 0:
    raise ValueError(f"record key {key!r} has a negative label index {int(array.min())}")
  return [int(i) for i in np.unique(array)]


def check_box(value: Any, where: str) -> np.ndarray:
  """A box as float32 [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1.

  `value`: any sequence / array of four real numbers. ValueError starting with `where` (e.g.
  "record 7: key 'box'") otherwise. Checked after rounding to float32, so a box that would
  collapse to zero width in float32 is refused rather than stored.
  """
  if isinstance(value, (str, bytes)):
    raise ValueError(f"{where} must be 4 numbers [x0, y0, x1, y1], got {value!r}")
  try:
    values = list(value)
  except TypeError:
    raise ValueError(f"{where} must be 4 numbers [x0, y0, x1, y1], got {value!r}") from None
  if len(values) != 4 or not all(
      isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
      for v in values):
    raise ValueError(f"{where} must be 4 numbers [x0, y0, x1, y1], got {value!r}")
  as_float = [float(v) for v in values]
  rule = "must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (normalised to the image)"
  x0, y0, x1, y1 = as_float
  if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):  # (NaN fails every comparison)
    raise ValueError(f"{where} {rule}, got {as_float}")
  box = np.asarray(as_float, dtype=np.float32)
  if not (box[0] < box[2] and box[1] < box[3]):
    raise ValueError(f"{where} {rule}; {as_float} has zero width or height in float32")
  return box


def encode_record(example: Mapping[str, Any]) -> bytes:
  """Serializes one example to record bytes.

  Labels and dropped indices may come in any order; they are stored sorted and unique because
  the order of tags on a post carries no meaning. `box` is optional; None means no box (so a
  decoded record can be re-encoded as it is).
  """
  unknown = set(example) - {"id", "image", "labels", "dropped", "source", "box"}
  if unknown:
    raise ValueError(f"unknown record keys {sorted(unknown)}")
  for key in ("id", "image", "labels"):
    if key not in example:
      raise ValueError(f"record is missing required key {key!r}")
  example_id = example["id"]
  if isinstance(example_id, bool) or not isinstance(example_id, (int, np.integer)):
    raise ValueError(f"record key 'id' must be an int, got {type(example_id).__name__}")
  image = example["image"]
  if not isinstance(image, (bytes, bytearray, memoryview)) or len(image) == 0:
    raise ValueError("record key 'image' must be non-empty encoded image bytes")
  labels = _normalize_indices(example["labels"], "labels")
  dropped = _normalize_indices(example.get("dropped", ()), "dropped")
  if set(labels) & set(dropped):
    raise ValueError(f"record {int(example_id)}: indices {sorted(set(labels) & set(dropped))} "
                     "are in both 'labels' and 'dropped'")
  source = example.get("source", "")
  if not isinstance(source, str):
    raise ValueError(f"record key 'source' must be a str, got {type(source).__name__}")
  record = {
      "schema_version": SCHEMA_VERSION,
      "id": int(example_id),
      "image": bytes(image),
      "labels": labels,
      "dropped": dropped,
      "source": source,
  }
  box = example.get("box")
  if box is not None:  # Absent, not null: box-less records stay byte-identical to older ones.
    record["box"] = [float(v) for v in check_box(box, f"record {int(example_id)}: key 'box'")]
  return msgpack.packb(record, use_bin_type=True)


def _decode_indices(record: dict, key: str) -> np.ndarray:
  value = record.get(key, [])
  if not isinstance(value, list) or not all(
      isinstance(i, int) and not isinstance(i, bool) for i in value):
    raise ValueError(f"record key {key!r} must be a list of ints")
  array = np.asarray(value, dtype=np.int32)
  if array.size and (array[0] < 0 or np.any(np.diff(array) <= 0)):
    raise ValueError(f"record key {key!r} must be sorted, unique and non-negative")
  return array


def decode_record(raw: bytes) -> dict[str, Any]:
  """Parses and validates record bytes.

  Returns a dict with every key present: `id` (int), `image` (bytes), `labels` and `dropped`
  (int32 arrays, possibly empty), `source` (str, "" when unknown) and `box` (float32 [4], or None
  when the record has none). Raises ValueError naming the record id and the offending key.
  """
  try:
    record = msgpack.unpackb(raw, raw=False)
  except Exception as e:  # msgpack raises several unrelated exception types.
    raise ValueError(f"record is not valid msgpack ({len(raw)} bytes): {e}") from e
  if not isinstance(record, dict):
    raise ValueError(f"record must be a msgpack map, got {type(record).__name__}")
  for key in _REQUIRED_KEYS:
    if key not in record:
      raise ValueError(f"record is missing required key {key!r}")
  unknown = set(record) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS)
  if unknown:
    raise ValueError(f"record has unknown keys {sorted(unknown)}")
  if record["schema_version"] != SCHEMA_VERSION:
    raise ValueError(f"record key 'schema_version' is {record['schema_version']!r}; "
                     f"this sw_zoo reads version {SCHEMA_VERSION}")
  if not isinstance(record["id"], int) or isinstance(record["id"], bool):
    raise ValueError(f"record key 'id' must be an int, got {type(record['id']).__name__}")
  if not isinstance(record["image"], bytes) or not record["image"]:
    raise ValueError(f"record {record['id']}: key 'image' must be non-empty bytes")
  source = record.get("source", "")
  if not isinstance(source, str):
    raise ValueError(f"record {record['id']}: key 'source' must be a str")
  box = None
  if "box" in record:  # Writers omit the key when there is no box; a stored null is malformed.
    if not isinstance(record["box"], list):
      raise ValueError(f"record {record['id']}: key 'box' must be a list of 4 numbers, got "
                       f"{type(record['box']).__name__}")
    box = check_box(record["box"], f"record {record['id']}: key 'box'")
  return {
      "id": record["id"],
      "image": record["image"],
      "labels": _decode_indices(record, "labels"),
      "dropped": _decode_indices(record, "dropped"),
      "source": source,
      "box": box,
  }


def decode_image(raw_bytes: bytes, *, fast: bool = False) -> np.ndarray:
  """Decodes JPEG/PNG/WebP/... bytes to a uint8 RGB array of shape [H, W, 3].

  JPEG (nearly all booru images) goes through simplejpeg (libjpeg-turbo, releases the GIL), which
  is several times faster than PIL. Everything else, and JPEGs simplejpeg rejects (e.g. CMYK),
  goes through PIL. Transparent images are composited onto white, the convention of WD-tagger
  preprocessing, rather than letting alpha=0 pixels turn into arbitrary colours.

  fast=True uses libjpeg-turbo's faster, slightly less exact IDCT and chroma upsampling for JPEGs
  (~10% faster; pixel values differ by a few levels). Only for augmented training input: the
  default is the exact decode that evaluation and inference use.
  """
  if raw_bytes[:3] == _JPEG_MAGIC:
    try:
      return simplejpeg.decode_jpeg(raw_bytes, colorspace="RGB", fastdct=fast, fastupsample=fast)
    except ValueError:
      pass  # Fall through to PIL, which handles more JPEG variants.
  try:
    with Image.open(io.BytesIO(raw_bytes)) as image:
      image.load()
      if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
      return np.asarray(image.convert("RGB"))
  except Exception as e:  # PIL raises many exception types for corrupt files.
    raise ValueError(f"could not decode image ({len(raw_bytes)} bytes, starting "
                     f"{bytes(raw_bytes[:8])!r}): {e}") from e
