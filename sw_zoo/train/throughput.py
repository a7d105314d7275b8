"""FLOPs per train step (from XLA's cost analysis) and model FLOP utilisation (MFU).

MFU = achieved FLOP/s / (devices x peak FLOP/s of one device). The peak is the dense bf16
figure from the vendors' spec sheets (the convention of the PaLM paper and MaxText), so an f32
run reports a lower MFU than the hardware could reach for its dtype. Unknown device kinds (CPUs)
get no MFU unless `config.peak_flops_per_device` supplies one.
"""
from __future__ import annotations

import time
from typing import Any

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


class StepTimer:
  """Training throughput bookkeeping: images/s per log window, and over the whole run with the
  first window (compilation) and evaluation time left out."""

  def __init__(self, batch_size: int, first_step: int):
    self.batch_size = batch_size
    self.first_step = first_step
    self.window_start, self.window_steps = time.perf_counter(), 0
    self.timed_images, self.timed_seconds = 0, 0.0

  def step(self) -> None:
    self.window_steps += 1

  def restart_window(self) -> None:
    """After work that is not training (an evaluation), so it is not billed to throughput."""
    self.window_start = time.perf_counter()

  def close_window(self, step: int) -> tuple[float, float]:
    """Ends the log window at `step`: (images/s, steps/s)."""
    elapsed = time.perf_counter() - self.window_start
    steps = self.window_steps
    if step - steps > self.first_step:  # the first window includes compilation
      self.timed_images += steps * self.batch_size
      self.timed_seconds += elapsed
    self.window_start, self.window_steps = time.perf_counter(), 0
    return steps * self.batch_size / elapsed, steps / elapsed

  def run_images_per_s(self) -> float | None:
    return self.timed_images / self.timed_seconds if self.timed_seconds > 0 else None
