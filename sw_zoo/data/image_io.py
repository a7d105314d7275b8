"""Reading arbitrary user images into clean RGB, resizing, and re-encoding them.

Used wherever an image enters sw_zoo from outside: the dataset converters in `data_prep` and
inference on user files. (Training decodes the already-clean shard images with
`records.decode_image`.)

    image = load_image("post.png", max_side=512)    # PIL RGB, longer side <= 512
    data = encode_image(image, "jpeg", quality=95)

`load_image` handles what booru downloads contain: EXIF orientation (applied, then dropped), the
first frame of animations, transparency (RGBA / LA / PA / palette or grey with a transparent
colour) composited onto white like WD-tagger preprocessing, CMYK, 1-bit, greyscale and 16-bit
greyscale ('I;16', scaled to 8 bits rather than clipped). Failures raise `ImageError` whose
`reason` says which kind of bad input it was, so converters can count them.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

IMAGE_FORMATS = ("jpeg", "webp")

# Reasons an image can be rejected, as reported by data_prep.
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
TRUNCATED_IMAGE = "truncated_image"
UNREADABLE_IMAGE = "unreadable_image"

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# JPEG DCT-domain downscaling (Image.draft) stops at this multiple of the target size; the rest
# is done by reduce() + LANCZOS, so the cheap step never decides the final quality.
_DRAFT_OVERSAMPLE = 2
# resize(reducing_gap=...) first reduce()s by an integer factor while the image stays at least
# this multiple of the target, then LANCZOS-resamples: as good as LANCZOS alone, much faster.
_REDUCING_GAP = 3.0


class ImageError(ValueError):
  """An image could not be used; `reason` is one of the constants above."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def _read_bytes(source: bytes | str | os.PathLike) -> tuple[bytes, str]:
  if isinstance(source, (bytes, bytearray, memoryview)):
    return bytes(source), "image bytes"
  path = os.fspath(source)
  try:
    with open(path, "rb") as f:
      return f.read(), path
  except FileNotFoundError:
    raise ImageError(MISSING_FILE, f"{path}: no such file") from None
  except OSError as e:
    raise ImageError(UNREADABLE_IMAGE, f"{path}: cannot read: {e}") from None


def _scale_to_uint8(array: np.ndarray, max_value: int) -> np.ndarray:
  array = np.clip(array.astype(np.float64), 0, max_value)
  return np.round(array * (255.0 / max_value)).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL mode -> RGB; transparency composited onto white, 16/32-bit greys scaled."""
  mode = image.mode
  if mode == "RGB" and "transparency" not in image.info:
    return image
  if mode.startswith("I;16") or mode in ("I", "F"):
    array = np.asarray(image)
    if mode.startswith("I;16"):
      grey = _scale_to_uint8(array, 65535)
    elif mode == "I":
      # 16-bit PNGs open as 'I' in some Pillow versions; genuine 32-bit data is rare.
      grey = _scale_to_uint8(array, 65535 if array.max(initial=0) > 255 else 255)
    else:
      grey = _scale_to_uint8(array, 1 if array.max(initial=0) <= 1.0 else 255)
    return Image.fromarray(grey, "L").convert("RGB")
  if mode in _TRANSPARENT_MODES or "transparency" in image.info:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def resize_max_side(image: Image.Image, max_side: int | None) -> Image.Image:
  """Downscales so the longer side is at most `max_side` (aspect kept); never upscales."""
  if not max_side or max(image.size) <= max_side:
    return image
  width, height = image.size
  scale = max_side / max(width, height)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)


def _classify(error: Exception, what: str) -> ImageError:
  message = f"{what}: {type(error).__name__}: {error}"
  if "truncated" in str(error).lower():
    return ImageError(TRUNCATED_IMAGE, message)
  return ImageError(UNREADABLE_IMAGE, message)


def _open_rgb(data: bytes, what: str, max_side: int | None,
              passthrough_jpeg: bool) -> tuple[Image.Image | None, bool]:
  """(RGB image, or None when the original JPEG bytes can be kept as they are)."""
  if not data:
    raise ImageError(EMPTY_FILE, f"{what}: empty (0 bytes)")
  try:
    with warnings.catch_warnings():
      # Big (but not bomb-sized) images are normal on boorus; DecompressionBombError still raises.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        keep_original = (passthrough_jpeg and image.format == "JPEG" and image.mode == "RGB"
                         and image.getexif().get(ExifTags.Base.Orientation, 1) == 1
                         and (not max_side or max(image.size) <= max_side))
        if max_side and image.format == "JPEG" and not keep_original:
          scale = max_side * _DRAFT_OVERSAMPLE / max(image.size)
          if scale < 1:
            image.draft(image.mode, (max(1, int(image.size[0] * scale)),
                                     max(1, int(image.size[1] * scale))))
        image.load()  # Raises for truncated / corrupt data; first frame of animations.
        if keep_original:
          return None, True
        image = ImageOps.exif_transpose(image)
        return to_rgb(image), False
  except ImageError:
    raise
  except Exception as e:  # PIL raises many unrelated types (OSError, SyntaxError, ...).
    raise _classify(e, what) from None


def load_image(source: bytes | str | os.PathLike, *, max_side: int | None = None) -> Image.Image:
  """Reads a file or encoded bytes into an upright RGB PIL image, longer side <= `max_side`.

  Raises ImageError (reason: missing_file, empty_file, truncated_image or unreadable_image).
  """
  data, what = _read_bytes(source)
  image, _ = _open_rgb(data, what, max_side, passthrough_jpeg=False)
  return resize_max_side(image, max_side)


def encode_image(image: Image.Image, image_format: str = "jpeg", quality: int = 95) -> bytes:
  """RGB PIL image -> JPEG or WebP bytes (no metadata, so no stale EXIF orientation)."""
  buffer = io.BytesIO()
  if image_format == "jpeg":
    image.save(buffer, format="JPEG", quality=quality)
  elif image_format == "webp":
    image.save(buffer, format="WEBP", quality=quality, method=4)
  else:
    raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
  return buffer.getvalue()


def prepare_image(source: bytes | str | os.PathLike, *, max_side: int | None = 512,
                  image_format: str = "jpeg", quality: int = 95,
                  passthrough_jpeg: bool = False) -> bytes:
  """load_image + encode_image. With `passthrough_jpeg`, an upright RGB JPEG that needs no
  resizing is stored as its original bytes (after checking that it decodes), avoiding a second
  lossy generation."""
  data, what = _read_bytes(source)
  image, keep_original = _open_rgb(data, what, max_side,
                                   passthrough_jpeg and image_format == "jpeg")
  if keep_original:
    return data
  return encode_image(resize_max_side(image, max_side), image_format, quality)
