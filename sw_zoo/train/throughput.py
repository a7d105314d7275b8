"""FLOPs per train step (from XLA's cost analysis), model FLOP utilisation (MFU), and the step
timer (images/s and the share of time spent waiting for input, per log window).

MFU = achieved FLOP/s / (devices x peak FLOP/s of one device). The peak is the dense bf16
figure from the vendors' spec sheets (the convention of the PaLM paper and MaxText), so an f32
run reports a lower MFU than the hardware could reach for its dtype. Unknown device kinds (CPUs)
get no MFU unless `config.peak_flops_per_device` supplies one.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax

# device_kind prefix -> dense bf16 peak FLOP/s per device (one TPU chip / one GPU).
PEAK_BF16_FLOPS = {
    "TPU v2": 45e12,
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def peak_flops_per_device(device: jax.Device, override: float = 0.0) -> float | None:
  if override > 0:
    return float(override)
  kind = getattr(device, "device_kind", "")
  matches = [k for k in PEAK_BF16_FLOPS if kind.startswith(k)]
  return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def lowered_flops(lowered: Any) -> float | None:
  """Total FLOPs of one call of a lowered (not yet partitioned) computation, or None when the
  backend's cost analysis has no figure."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # cost analysis is best-effort metadata, never a reason to stop training
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def utilisation(step_flops: float | None, steps_per_s: float, num_devices: int,
                peak_per_device: float | None) -> dict[str, float]:
  """{'tflops_per_s', 'mfu'} for the scalars logged each window (each only when known)."""
  out: dict[str, float] = {}
  if step_flops:
    achieved = step_flops * steps_per_s
    out["tflops_per_s"] = achieved / 1e12
    if peak_per_device:
      out["mfu"] = achieved / (num_devices * peak_per_device)
  return out


class Window(NamedTuple):
  """One log window's throughput. `input_wait`: the share of its wall time the host spent waiting
  for the next batch (`next()` on the input iterator plus assembling the global batch on the
  devices). While the devices still have queued steps that wait overlaps their compute, so it
  is an upper bound on the time the devices sat idle for lack of input; near 0 means the input
  pipeline keeps up, near 1 means it is the bottleneck."""
  images_per_s: float
  steps_per_s: float
  input_wait: float


class StepTimer:
  """Training throughput bookkeeping: images/s, steps/s and input wait per log window, and over
  the whole run with the first window (compilation) and paused time (evaluation, writing a
  profile) left out."""

  def __init__(self, batch_size: int, first_step: int, clock: Callable[[], float] = time.perf_counter):
    self.batch_size = batch_size
    self.first_step = first_step
    self._clock = clock
    self.timed_images, self.timed_seconds, self.timed_wait = 0, 0.0, 0.0
    self._open_window()

  def _open_window(self) -> None:
    self.window_start, self.window_steps = self._clock(), 0
    self.window_wait, self.window_paused = 0.0, 0.0

  def step(self) -> None:
    self.window_steps += 1

  @contextlib.contextmanager
  def waiting_for_input(self) -> Iterator[None]:
    """Around fetching the next batch: its time is the window's input wait."""
    start = self._clock()
    try:
      yield
    finally:
      self.window_wait += self._clock() - start

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Around work that is not training (an evaluation, writing a trace): its time is left out of
    the window, so it is billed neither to throughput nor to input wait."""
    start = self._clock()
    try:
      yield
    finally:
      self.window_paused += self._clock() - start

  def close_window(self, step: int) -> Window:
    """Ends the log window at `step`."""
    elapsed = max(self._clock() - self.window_start - self.window_paused, 1e-9)
    steps, wait = self.window_steps, min(self.window_wait, elapsed)
    if step - steps > self.first_step:  # the first window includes compilation
      self.timed_images += steps * self.batch_size
      self.timed_seconds += elapsed
      self.timed_wait += wait
    self._open_window()
    return Window(steps * self.batch_size / elapsed, steps / elapsed, wait / elapsed)

  def run_images_per_s(self) -> float | None:
    return self.timed_images / self.timed_seconds if self.timed_seconds > 0 else None

  def run_input_wait(self) -> float | None:
    """Input wait over the timed windows of the whole run (the same windows as run_images_per_s)."""
    return self.timed_wait / self.timed_seconds if self.timed_seconds > 0 else None
