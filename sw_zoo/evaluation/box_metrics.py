"""Box-head evaluation: intersection over union of one predicted box per image against the labelled
one, the mean IoU and the IoU >= 0.5 accuracy the timm box-head write-up reports, and the
best / worst predictions drawn for a look.

Boxes are [x0, y0, x1, y1] in [0, 1] of the model input square (as the pipeline and the box head
give them). Device side (`batch_box_stats`, jnp) sums per batch, summed over batches and hosts
like `batch_stats`; host side (`box_scores`) turns the sums into scores.
"""
from __future__ import annotations

import heapq
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

IOU_HIT = 0.5  # the usual "detected" cut-off (PASCAL VOC)
BOX_STAT_KEYS = ("box_count", "box_hits", "box_iou_sum")
TRUE_COLOUR, PRED_COLOUR = (0, 170, 0), (220, 0, 0)


def iou(pred, true, xp=np):
  """IoU of matching rows of two [..., 4] box arrays (0 where the union is empty)."""
  ix = xp.clip(xp.minimum(pred[..., 2], true[..., 2]) - xp.maximum(pred[..., 0], true[..., 0]), 0, None)
  iy = xp.clip(xp.minimum(pred[..., 3], true[..., 3]) - xp.maximum(pred[..., 1], true[..., 1]), 0, None)
  inter = ix * iy
  area = lambda b: xp.clip(b[..., 2] - b[..., 0], 0, None) * xp.clip(b[..., 3] - b[..., 1], 0, None)
  union = area(pred) + area(true) - inter
  return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0)


def flip_box(box, xp=np):
  """The box of the horizontally mirrored image."""
  return xp.stack([1 - box[..., 2], box[..., 1], 1 - box[..., 0], box[..., 3]], axis=-1)


def batch_box_stats(ious, box_mask, mask) -> dict[str, Any]:
  """Sums of a batch's per-row IoUs (`iou`) over the rows that are real (mask) and have a box
  (box_mask): count, IoU >= 0.5 hits (int32) and the IoU sum (float32: a mean over < 2^24 boxes
  per pass loses nothing that matters)."""
  import jax.numpy as jnp

  valid = (box_mask > 0) & mask
  return {"box_count": jnp.sum(valid.astype(jnp.int32)),
          "box_hits": jnp.sum((valid & (ious >= IOU_HIT)).astype(jnp.int32)),
          "box_iou_sum": jnp.sum(jnp.where(valid, ious, 0.0))}


def zero_box_stats() -> dict[str, np.ndarray]:
  return {"box_count": np.zeros((), np.int32), "box_hits": np.zeros((), np.int32),
          "box_iou_sum": np.zeros((), np.float32)}


def box_scores(stats: dict[str, Any]) -> dict[str, float]:
  """{'boxes', 'box_mean_iou', 'box_iou50_accuracy'} from summed stats (NaN scores without boxes)."""
  count = int(stats["box_count"])
  if not count:
    return {"boxes": 0, "box_mean_iou": float("nan"), "box_iou50_accuracy": float("nan")}
  return {"boxes": count, "box_mean_iou": float(stats["box_iou_sum"]) / count,
          "box_iou50_accuracy": int(stats["box_hits"]) / count}


class Extremes:
  """The `k` best and `k` worst predictions by IoU seen so far (host side, with their images)."""

  def __init__(self, k: int):
    self.k = k
    self._best: list[tuple[float, int, Any]] = []   # min-heap of the best: (iou, order, row)
    self._worst: list[tuple[float, int, Any]] = []  # min-heap of -iou: the worst
    self._seen = 0

  def add(self, ious: np.ndarray, ids: np.ndarray, images: np.ndarray, pred: np.ndarray, true: np.ndarray) -> None:
    for i in range(len(ious)):
      row = (int(ids[i]), images[i], pred[i], true[i], float(ious[i]))
      self._seen += 1
      for heap, key in ((self._best, float(ious[i])), (self._worst, -float(ious[i]))):
        if len(heap) < self.k:
          heapq.heappush(heap, (key, self._seen, row))
        elif key > heap[0][0]:
          heapq.heapreplace(heap, (key, self._seen, row))

  def best(self) -> list[tuple]:
    return [r for _, _, r in sorted(self._best, key=lambda e: -e[0])]

  def worst(self) -> list[tuple]:
    return [r for _, _, r in sorted(self._worst, key=lambda e: -e[0])]


def draw(image: np.ndarray, pred: np.ndarray, true: np.ndarray, *, width: int = 2) -> np.ndarray:
  """The image with the labelled box (green) and the prediction (red) drawn on it."""
  canvas = Image.fromarray(image).convert("RGB")
  side_x, side_y = canvas.size
  pen = ImageDraw.Draw(canvas)
  for box, colour in ((true, TRUE_COLOUR), (pred, PRED_COLOUR)):
    x0, y0, x1, y1 = (float(v) for v in box)
    pen.rectangle((x0 * (side_x - 1), y0 * (side_y - 1), x1 * (side_x - 1), y1 * (side_y - 1)),
                  outline=colour, width=width)
  return np.asarray(canvas)
