"""Host-side, per-example image preprocessing and augmentation (numpy + PIL only).

Runs inside grain worker threads, so everything here is cheap and deterministic given the
`np.random.Generator` grain hands to `random_map`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Letterbox padding colour: WD-tagger preprocessing pads non-square images with white.
PAD_VALUE = 255


def preprocess_eval(image: np.ndarray, image_size: int) -> np.ndarray:
  """Decoded RGB uint8 [H, W, 3] -> [image_size, image_size, 3] uint8.

  Non-square images are centred on a white square (letterbox) so tags near the edges are kept
  and aspect ratios are not distorted, then resized with PIL's antialiased bicubic filter.
  Training applies the same function before augmenting, and inference must too, so the model
  always sees images prepared one way.
  """
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  height, width = image.shape[:2]
  if height != width:
    side = max(height, width)
    square = np.full((side, side, 3), PAD_VALUE, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = image
    image = square
  if image.shape[0] != image_size:
    image = np.asarray(Image.fromarray(image).resize((image_size, image_size),
                                                     Image.Resampling.BICUBIC))
  return image


def augment(image: np.ndarray, rng: np.random.Generator, image_size: int,
            max_shift_fraction: float = 1 / 16) -> np.ndarray:
  """Random horizontal flip and a small random translation (pad-and-crop).

  The input is already `image_size` square (see `preprocess_eval`). Translation pads with edge
  pixels by up to `max_shift_fraction` of the side and crops back, so no content is invented and
  nothing near the centre is lost; it deliberately does not rescale, because size tags
  (`small_object`, ...) are defined relative to the image side.
  """
  if image.shape[:2] != (image_size, image_size):
    raise ValueError(f"augment expects a {image_size}x{image_size} image, got {image.shape}")
  pad = int(round(image_size * max_shift_fraction))
  if pad > 0:
    # np.pad with mode="edge" copies the whole image; padding only the needed side is cheaper
    # but the full pad keeps this readable and costs ~20 us at 128 px.
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    image = padded[top:top + image_size, left:left + image_size]
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return np.ascontiguousarray(image)
