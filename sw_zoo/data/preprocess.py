"""Inference-side image preparation: the one function evaluation, `Tagger` and the default
training spec use to turn a decoded image into model input (`preprocess_eval`), and the
letterbox / resize primitives it is built from (shared with the training ops in `augment`).

`preprocess_eval` letterboxes on white and resizes bicubically (antialiased when shrinking), the
WD-tagger convention; bundles describe it in their config.json (`bundle.PREPROCESSING`).
`box_after_letterbox` / `box_to_source` carry a normalised box between the source image and that
model input (the resize does not change normalised coordinates).
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# grain's worker threads already run one example per thread; OpenCV's own thread pool on top
# only adds contention (measured in benchmarks/input_pipeline.py). This is process-wide.
cv2.setNumThreads(1)

# Letterbox padding colour: WD-tagger preprocessing pads non-square images with white.
PAD_VALUE = 255
WHITE = (PAD_VALUE,) * 3

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
EVAL_METHOD = "bicubic"


def check_rgb(image: np.ndarray) -> None:
  if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
      or image.dtype != np.uint8:
    desc = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
            else type(image).__name__)
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {desc}")


def pad_white(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
  """White padding (a copy, even with no padding)."""
  return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=WHITE)


def letterbox_offsets(height: int, width: int) -> tuple[int, int, int]:
  """(side, top, left): where `letterbox` puts an H x W image on its square (whole pixels)."""
  side = max(height, width)
  return side, (side - height) // 2, (side - width) // 2


def letterbox(image: np.ndarray) -> np.ndarray:
  """Centres a non-square image on a white square of side max(H, W); squares pass through."""
  height, width = image.shape[:2]
  if height == width:
    return image
  side, top, left = letterbox_offsets(height, width)
  return pad_white(image, top, side - height - top, left, side - width - left)


def _letterbox_affine(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(scale, offset) per [x0, y0, x1, y1]: letterboxed = source * scale + offset, normalised."""
  side, top, left = letterbox_offsets(height, width)
  scale = np.array([width, height, width, height], np.float64) / side
  offset = np.array([left, top, left, top], np.float64) / side
  return scale, offset


def box_after_letterbox(box, height: int, width: int) -> np.ndarray:
  """A box normalised to an H x W source image -> normalised to its letterboxed square.

  `box`: [..., 4] as [x0, y0, x1, y1] (a record's `box`). The square is what `letterbox` (and so
  `preprocess_eval`) makes, with its whole-pixel offsets; resizing the square afterwards leaves
  normalised coordinates unchanged, so the result is the box in `preprocess_eval`'s output.
  Returns float32 [..., 4].
  """
  scale, offset = _letterbox_affine(height, width)
  return (np.asarray(box, np.float64) * scale + offset).astype(np.float32)


def box_to_source(box, height: int, width: int) -> np.ndarray:
  """The inverse of `box_after_letterbox`: a box normalised to the model input (the letterboxed
  square of an H x W image, at any resolution) -> normalised to the source image.

  For predictions: a predicted box may reach into the white padding, which is not part of the
  image, so the result is clipped to [0, 1] (x0 <= x1 still holds; a box entirely in the
  padding collapses onto the image edge). Multiply by (W, H, W, H) for pixels. float32 [..., 4].
  """
  scale, offset = _letterbox_affine(height, width)
  source = (np.asarray(box, np.float64) - offset) / scale
  return np.clip(source, 0.0, 1.0).astype(np.float32)


def resize(image: np.ndarray, size: int, method: str = EVAL_METHOD) -> np.ndarray:
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
  check_rgb(image)
  image = letterbox(image)
  if image.shape[0] != image_size:
    image = resize(image, image_size, EVAL_METHOD)
  return image
