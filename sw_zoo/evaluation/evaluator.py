"""The one evaluation pass: a model streamed over a split, used by the trainer (periodic and final
validation) and by `sw-zoo eval`, so both measure exactly the same thing.

Batches come from `pipeline.make_eval_dataset`: each process reads its own slice, padded to the
same number of batches (masked rows), and the global batch is assembled with
`sharding.global_batch`. The accumulating step is jitted with replicated outputs, so what it
returns is already the sum over every host's rows (`batch_stats`), turned into scores on the host
by `metrics` / `report`.

    evaluator = Evaluator(model, mesh=mesh, num_tags=T, threshold=0.4, params_sharding=sh)
    result = evaluator.run(params, data_dir, split="validation", global_batch_size=64, image_size=320)
    metrics.f1_scores(result.stats)

An Evaluator compiles its step once and can run many times (the trainer evaluates every epoch).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sw_zoo import progress, sharding
from sw_zoo.data import pipeline
from sw_zoo.evaluation import batch_stats, box_metrics
from sw_zoo.evaluation.metrics import DEFAULT_BINS

TTA_MODES = ("none", "flip")


def predict_probs(params: Any, images: jax.Array, *, model: Any, tta: str = "none", box: bool = False):
  """Sigmoid scores [B, T] in float32; with tta='flip' the mean of the image's and its mirror's.
  With `box` (a model with a box head): (scores, boxes [B, 4]), the mirror's box flipped back."""
  def once(x):
    if not box:
      return jax.nn.sigmoid(model.apply({"params": params}, x.astype(jnp.float32), train=False).astype(jnp.float32)), None
    out = model.apply({"params": params}, x.astype(jnp.float32), train=False, return_features=True)
    return jax.nn.sigmoid(out["logits"].astype(jnp.float32)), out["box"].astype(jnp.float32)
  probs, boxes = once(images)
  if tta == "flip":
    flipped_probs, flipped_boxes = once(images[:, :, ::-1, :])
    probs = 0.5 * (probs + flipped_probs)
    if box:
      boxes = 0.5 * (boxes + box_metrics.flip_box(flipped_boxes, xp=jnp))
  return (probs, boxes) if box else probs


def _accumulate(total: dict[str, jax.Array], params: Any, batch: dict[str, jax.Array], *, model: Any, tta: str,
                threshold: float, num_bins: int, box: bool):
  out = predict_probs(params, batch["image"], model=model, tta=tta, box=box)
  probs, boxes = out if box else (out, None)
  new = batch_stats.batch_stats(probs, batch["labels"], batch["mask"], threshold=threshold, num_bins=num_bins)
  if not box:
    return jax.tree.map(jnp.add, total, new), None
  ious = box_metrics.iou(boxes, batch["box"].astype(jnp.float32), xp=jnp)
  new.update(box_metrics.batch_box_stats(ious, batch["box_mask"], batch["mask"]))
  return jax.tree.map(jnp.add, total, new), {"box": boxes, "iou": ious}


@dataclasses.dataclass
class PassResult:
  stats: dict[str, np.ndarray]  # summed batch_stats, int64 on the host
  num_batches: int
  seconds: float  # the whole pass, data loading included
  forward_images_per_s: float | None = None  # one plain forward pass, data loading excluded
  # The first global batch's leading images (process 0's rows) with labels and scores.
  samples: dict[str, np.ndarray] | None = None
  # With a box head and box_examples > 0 (one process): the best and worst predictions by IoU,
  # rows of (id, image, predicted box, labelled box, IoU).
  box_extremes: box_metrics.Extremes | None = None


class Evaluator:
  """Compiled evaluation of one model on one mesh; see the module docstring.

  `params_sharding`: how the params passed to `run` are laid out (a tree of shardings, e.g. the
  trainer's FSDP eval params; default replicated). `num_samples` > 0 also returns that many
  (image, labels, scores) rows of the first batch, for W&B prediction tables. `box` (a model with
  a box head, a dataset with boxes) adds the box scores (`box_metrics`) to the stats.
  """

  def __init__(self, model: Any, *, mesh: Any, num_tags: int, threshold: float, num_bins: int = DEFAULT_BINS,
               tta: str = "none", params_sharding: Any = None, num_samples: int = 0, box: bool = False):
    if tta not in TTA_MODES:
      raise ValueError(f"tta={tta!r}: expected one of {TTA_MODES}")
    self.model, self.mesh, self.num_tags, self.num_bins, self.box = model, mesh, num_tags, num_bins, box
    self.repl, self.batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    self.params_sharding = self.repl if params_sharding is None else params_sharding
    self._step = jax.jit(
        functools.partial(_accumulate, model=model, tta=tta, threshold=threshold, num_bins=num_bins, box=box),
        in_shardings=(self.repl, self.params_sharding, self.batch_sh), out_shardings=(self.repl, self.batch_sh),
        donate_argnums=(0,))
    self._samples = None
    if num_samples > 0:
      self._samples = jax.jit(lambda p, images: predict_probs(p, images, model=model)[:num_samples],
                              in_shardings=(self.params_sharding, self.batch_sh), out_shardings=self.repl)

  def run(self, params: Any, data_dir: str, *, split: str, global_batch_size: int, image_size: int,
          num_threads: int = 2, prefetch: int = 4, timing_repeats: int = 0, show_progress: bool = False,
          box_examples: int = 0) -> PassResult:
    """Evaluates `params` (host or device arrays) on `split`; returns the summed stats (and with a
    box head and `box_examples` k > 0 on one process, the k best and worst box predictions)."""
    if global_batch_size % jax.device_count():
      raise ValueError(f"batch size {global_batch_size} is not divisible by the {jax.device_count()} devices")
    params = jax.device_put(params, self.params_sharding)
    zero = batch_stats.zero_stats(self.num_tags, self.num_bins)
    if self.box:
      zero.update(box_metrics.zero_box_stats())
    total = jax.device_put(zero, self.repl)
    batches = pipeline.make_eval_dataset(
        data_dir, split=split, global_batch_size=global_batch_size, image_size=image_size,
        process_index=jax.process_index(), process_count=jax.process_count(), num_threads=num_threads,
        prefetch_batches=prefetch, with_box=self.box)
    keys = ("image", "labels", "mask") + (("box", "box_mask") if self.box else ())
    # Per-image rows are fetched only where they are all local (one process).
    extremes = box_metrics.Extremes(box_examples) if self.box and box_examples > 0 and jax.process_count() == 1 else None
    bar = progress.bar(len(batches), f"eval {split}", unit="batch",
                       enabled=show_progress and jax.process_index() == 0)
    start = time.perf_counter()
    first_images, samples = None, None
    for local in batches:
      ids = local["id"]
      local = {k: local[k] for k in keys}
      batch = sharding.global_batch(local, self.mesh)
      if first_images is None:
        first_images = batch["image"]
        if self._samples is not None:
          probs = np.asarray(jax.device_get(self._samples(params, batch["image"])))
          n = min(len(probs), int(local["mask"].sum()))  # process 0's rows lead the global batch
          samples = {"image": local["image"][:n], "labels": local["labels"][:n], "probs": probs[:n]}
      total, rows = self._step(total, params, batch)
      if extremes is not None:
        rows = jax.device_get(rows)
        real = local["mask"] & (local["box_mask"] > 0)
        extremes.add(rows["iou"][real], ids[real], local["image"][real], rows["box"][real], local["box"][real])
      bar.update(1)
    stats = batch_stats.host_stats(total)  # waits for the last step
    seconds = time.perf_counter() - start
    bar.close()
    result = PassResult(stats, len(batches), seconds, samples=samples, box_extremes=extremes)
    if timing_repeats > 0 and first_images is not None:
      result.forward_images_per_s = self.forward_images_per_s(params, first_images, repeats=timing_repeats)
    return result

  def forward_images_per_s(self, params: Any, images: jax.Array, *, repeats: int) -> float:
    """Images/s of the plain (no TTA) forward pass on one global batch, compile excluded: the
    inference throughput a Pareto selection compares (data loading is not the model's cost)."""
    fn = jax.jit(functools.partial(predict_probs, model=self.model),
                 in_shardings=(self.params_sharding, self.batch_sh),
                 out_shardings=self.batch_sh).lower(params, images).compile()
    jax.block_until_ready(fn(params, images))
    start = time.perf_counter()
    for _ in range(repeats):
      out = fn(params, images)
    jax.block_until_ready(out)
    return repeats * images.shape[0] / (time.perf_counter() - start)
