"""One streaming pass of a model over an eval split: sharded forward pass (optionally with flip
test-time augmentation) and `metrics.batch_stats`, summed on device.

Batches come from `pipeline.make_eval_dataset` exactly as in the trainer's `evaluate`: each
process reads its own slice, padded to the same number of batches (masked rows), and the
global batch is assembled with `sharding.global_batch`. The accumulating step is jitted with
replicated outputs, so what it returns is already the sum over every host's rows.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sw_zoo import metrics, sharding
from sw_zoo.data import pipeline
from sw_zoo.train.steps import predict_probs

TTA_MODES = ("none", "flip")


def predict(params: Any, images: jax.Array, *, model: Any, tta: str) -> jax.Array:
  """Sigmoid scores [B, T]; with tta='flip' the mean of the image's and its mirror's."""
  probs = predict_probs(params, images, model=model)
  if tta == "flip":
    probs = 0.5 * (probs + predict_probs(params, images[:, :, ::-1, :], model=model))
  return probs


def _accumulate(total: dict[str, jax.Array], params: Any, batch: dict[str, jax.Array], *, model: Any, tta: str,
                threshold: float, num_bins: int) -> dict[str, jax.Array]:
  probs = predict(params, batch["image"], model=model, tta=tta)
  new = metrics.batch_stats(probs, batch["labels"], batch["mask"], threshold=threshold, num_bins=num_bins)
  return jax.tree.map(jnp.add, total, new)


@dataclasses.dataclass
class PassResult:
  stats: dict[str, np.ndarray]  # summed metrics.batch_stats, int64 on the host
  num_batches: int
  seconds: float  # the whole pass, data loading included
  forward_images_per_s: float | None  # one plain forward pass, data loading excluded


def run(model: Any, params: Any, data_dir: str, *, mesh: Any, split: str, global_batch_size: int, image_size: int,
        num_tags: int, threshold: float, num_bins: int = metrics.DEFAULT_BINS, tta: str = "none",
        num_threads: int = 2, prefetch: int = 4, timing_repeats: int = 3, progress: bool = True) -> PassResult:
  """Evaluates `params` (a host or device tree) on `split`; returns the summed stats."""
  if tta not in TTA_MODES:
    raise ValueError(f"tta={tta!r}: expected one of {TTA_MODES}")
  if global_batch_size % jax.device_count():
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {jax.device_count()} devices")
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  params = jax.device_put(params, repl)
  step = jax.jit(functools.partial(_accumulate, model=model, tta=tta, threshold=threshold, num_bins=num_bins),
                 in_shardings=(repl, repl, batch_sh), out_shardings=repl, donate_argnums=(0,))
  total = jax.device_put(metrics.zero_stats(num_tags, num_bins), repl)
  batches = pipeline.make_eval_dataset(
      data_dir, split=split, global_batch_size=global_batch_size, image_size=image_size,
      process_index=jax.process_index(), process_count=jax.process_count(), num_threads=num_threads,
      prefetch_batches=prefetch)
  bar = _progress(len(batches), f"eval {split}", enabled=progress and jax.process_index() == 0)
  start = time.perf_counter()
  first_images = None
  for local in batches:
    batch = sharding.global_batch({k: local[k] for k in ("image", "labels", "mask")}, mesh)
    if first_images is None:
      first_images = batch["image"]
    total = step(total, params, batch)
    bar.update(1)
  stats = metrics.host_stats(total)  # waits for the last step
  seconds = time.perf_counter() - start
  bar.close()
  throughput = None
  if timing_repeats > 0 and first_images is not None:
    throughput = forward_images_per_s(model, params, first_images, mesh=mesh, repeats=timing_repeats)
  return PassResult(stats, len(batches), seconds, throughput)


def forward_images_per_s(model: Any, params: Any, images: jax.Array, *, mesh: Any, repeats: int) -> float:
  """Images/s of the plain (no TTA) forward pass on one global batch, compile excluded: the
  inference throughput a Pareto selection compares (data loading is not the model's cost)."""
  fn = jax.jit(functools.partial(predict, model=model, tta="none"),
               in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
               out_shardings=sharding.batch_sharding(mesh)).lower(params, images).compile()
  jax.block_until_ready(fn(params, images))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(params, images)
  jax.block_until_ready(out)
  return repeats * images.shape[0] / (time.perf_counter() - start)


def _progress(total: int, desc: str, *, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, dynamic_ncols=True)
