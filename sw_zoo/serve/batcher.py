"""Dynamic batching: images of concurrent requests share one forward pass.

    batcher = Batcher(tagger.scores_of_batch, max_batch=16, max_wait_s=0.01)
    scores = await batcher.submit(images, tta=None)     # images: list of uint8 [S, S, 3]
    ...
    await batcher.close()

One consumer task owns the queue. It waits for a first request, then keeps collecting until the
batch holds `max_batch` images or `max_wait_s` has passed since that first request, and runs the
pass in its own worker thread so the event loop keeps accepting (and decoding) requests meanwhile.
While a pass runs, new requests pile up in the queue, so under load the next batch is fuller
without any extra waiting; with a single client the wait adds at most `max_wait_s` of latency.

Requests asking for different test-time augmentation are collected in the same window but never
share a pass: each TTA setting gets its own pass(es). A request with more images than `max_batch`
is split over several passes. A pass that raises fails only the requests in it; the consumer
carries on with the next batch.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Forward = Callable[..., np.ndarray]  # forward(images [N, S, S, 3] uint8, *, tta) -> scores [N, T]
PassHook = Callable[[int, "str | None", float], None]  # (images, tta, seconds) after each pass


@dataclasses.dataclass
class _Job:
  images: list[np.ndarray]
  tta: str | None
  future: asyncio.Future
  rows: list[np.ndarray | None] = dataclasses.field(default_factory=list)
  failed: bool = False


class Batcher:
  """Collects `submit`ted images into forward passes; see the module docstring.

  Args:
    forward: runs one pass, `forward(images, tta=...)` -> float32 [N, num_tags]; called from one
      worker thread at a time.
    max_batch: most images in one pass.
    max_wait_s: how long the first request of a batch waits for company.
    on_pass: called after every successful pass with (images, tta, seconds), e.g. for metrics.
  """

  def __init__(self, forward: Forward, *, max_batch: int = 16, max_wait_s: float = 0.01,
               on_pass: PassHook | None = None):
    if max_batch < 1:
      raise ValueError(f"max_batch must be positive, got {max_batch}")
    if max_wait_s < 0:
      raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
    self.forward = forward
    self.max_batch = int(max_batch)
    self.max_wait_s = float(max_wait_s)
    self.on_pass = on_pass
    self._queue: asyncio.Queue[_Job] | None = None
    self._task: asyncio.Task | None = None
    # One thread: passes run one after another (the device is one resource), and a slow pass
    # never blocks the event loop.
    self._executor = ThreadPoolExecutor(1, thread_name_prefix="sw_zoo-serve-forward")
    self._waiting_images = 0
    self._in_flight: list[_Job] = []
    self._closed = False

  @property
  def queue_depth(self) -> int:
    """Images submitted and not yet in a running pass."""
    return self._waiting_images

  def start(self) -> None:
    """Starts the consumer on the running loop (`submit` does it too, on first use)."""
    if self._closed:
      raise RuntimeError("the batcher is closed")
    if self._task is None:
      self._queue = asyncio.Queue()
      self._task = asyncio.get_running_loop().create_task(self._consume(), name="sw_zoo-serve-batcher")

  async def submit(self, images: list[np.ndarray], *, tta: str | None = None) -> np.ndarray:
    """Scores [len(images), num_tags] of the images, computed in shared passes."""
    if not images:
      raise ValueError("submit() needs at least one image")
    self.start()
    job = _Job(list(images), tta, asyncio.get_running_loop().create_future())
    job.rows = [None] * len(job.images)
    self._waiting_images += len(job.images)
    self._queue.put_nowait(job)
    return await job.future

  async def close(self) -> None:
    """Stops the consumer; requests still queued fail with RuntimeError."""
    self._closed = True
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass
      left = self._in_flight + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
      for job in left:
        if not job.future.done():
          job.future.set_exception(RuntimeError("the server is shutting down"))
    self._executor.shutdown(wait=False, cancel_futures=True)

  # ---- The consumer ------------------------------------------------------------------------

  async def _collect(self) -> list[_Job]:
    """The next batch: a first job, then whatever arrives within the window, up to max_batch.
    Jobs are kept in `_in_flight` as they arrive, so `close` can fail them if it interrupts."""
    jobs = self._in_flight = [await self._queue.get()]
    count = len(jobs[0].images)
    deadline = time.monotonic() + self.max_wait_s
    while count < self.max_batch:
      try:
        job = self._queue.get_nowait()  # already waiting: no timer needed
      except asyncio.QueueEmpty:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          break
        try:
          job = await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
          break
      jobs.append(job)
      count += len(job.images)
    return jobs

  def _passes(self, jobs: list[_Job]) -> list[tuple[str | None, list[tuple[_Job, int]]]]:
    """(tta, [(job, image index)]) per pass: grouped by TTA, at most max_batch images each."""
    by_tta: dict[str | None, list[tuple[_Job, int]]] = {}
    for job in jobs:
      by_tta.setdefault(job.tta, []).extend((job, i) for i in range(len(job.images)))
    return [(tta, items[start:start + self.max_batch])
            for tta, items in by_tta.items() for start in range(0, len(items), self.max_batch)]

  async def _consume(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      jobs = await self._collect()
      for tta, items in self._passes(jobs):
        live = [(job, i) for job, i in items if not job.future.done()]  # skip clients that left
        self._waiting_images -= len(items)
        if not live:
          continue
        batch = np.stack([job.images[i] for job, i in live])
        started = time.perf_counter()
        try:
          scores = await loop.run_in_executor(self._executor, lambda: self.forward(batch, tta=tta))
          scores = np.asarray(scores)
          if scores.shape[0] != len(live):
            raise RuntimeError(f"the forward pass returned {scores.shape[0]} rows for {len(live)} images")
        except Exception as error:  # fails this pass's requests only; the server keeps serving
          for job, _ in live:
            job.failed = True
            if not job.future.done():
              job.future.set_exception(error)
          continue
        if self.on_pass is not None:
          self.on_pass(len(live), tta, time.perf_counter() - started)
        for (job, i), row in zip(live, scores):
          job.rows[i] = row
      for job in jobs:
        if not job.future.done() and not job.failed:
          job.future.set_result(np.stack(job.rows))
      self._in_flight = []
