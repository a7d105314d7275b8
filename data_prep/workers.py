"""What the worker processes of pass 2 run: one item's image decoded, resized and re-encoded into
record bytes, or the reason it was skipped. The pool that runs it is `data_prep.parallel`; these
are module-level so that spawned workers can unpickle them by reference."""

from __future__ import annotations

from typing import Any, NamedTuple

from data_prep import boxes
from data_prep.sources import BAD_BOX
from sw_zoo.data.image_io import UNREADABLE_IMAGE, ImageError, prepare_image
from sw_zoo.data.records import encode_record


class ImageConfig(NamedTuple):
  """How every image is re-encoded (from `PrepareOptions`)."""
  max_side: int | None
  image_format: str
  quality: int
  passthrough_jpeg: bool


class Task(NamedTuple):
  """One item to convert, with its place in the output and its labels."""
  split: str
  shard: int
  last: bool  # Last item of its shard.
  item_id: int
  key: str
  path: str | None
  image: bytes | None
  labels: tuple[int, ...]
  error: tuple[str, str] | None
  box: tuple[float, float, float, float] | None = None  # As the source gave it (SourceItem.box).
  box_units: str = "normalised"


class Result(NamedTuple):
  """A converted item, or why it was skipped, with its place in the output."""
  split: str
  shard: int
  last: bool
  key: str
  path: str | None
  labels: tuple[int, ...]
  status: str  # "ok" or a skip reason.
  payload: Any  # Record bytes, or the skip detail.
  has_box: bool = False  # The record carries a box.


# Set once per worker process, so the config is not pickled with every task.
_worker_config: ImageConfig | None = None


def init_worker(config: ImageConfig) -> None:
  """Pool initializer: remembers how images are to be encoded in this process."""
  global _worker_config
  _worker_config = config


def process(task: Task) -> Result:
  """Image -> record bytes, or the reason it was skipped. Never raises for bad input."""
  def result(status, payload, has_box=False):
    return Result(task.split, task.shard, task.last, task.key, task.path, task.labels, status,
                  payload, has_box)

  if task.error is not None:
    return result(*task.error)
  c = _worker_config
  source = task.image if task.image is not None else task.path
  try:
    image = prepare_image(source, max_side=c.max_side, image_format=c.image_format,
                          quality=c.quality, passthrough_jpeg=c.passthrough_jpeg)
    box = None
    if task.box is not None:
      # After the image: a missing or broken file is reported as such, not as a bad box. The
      # stored image keeps the displayed aspect, so normalised coordinates carry over as they are.
      try:
        box = boxes.to_normalised(task.box, task.box_units, source)
      except ValueError as e:
        return result(BAD_BOX, f"{task.path or task.key}: {e}")
    return result("ok", encode_record({"id": task.item_id, "image": image,
                                       "labels": list(task.labels), "source": task.key,
                                       "box": box}), box is not None)
  except ImageError as e:
    return result(e.reason, str(e))
  except Exception as e:  # Whatever a decoder throws, this item is skipped, the run goes on.
    return result(UNREADABLE_IMAGE, f"{task.path or task.key}: {type(e).__name__}: {e}")
