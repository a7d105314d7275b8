"""FLOPs per train step (from XLA's cost analysis) and model FLOP utilisation (MFU).

MFU = achieved FLOP/s / (devices x peak FLOP/s of one device). The peak is the dense bf16
figure from the vendors' spec sheets (the convention of the PaLM paper and MaxText), so an f32
run reports a lower MFU than the hardware could reach for its dtype. Unknown device kinds (CPUs)
get no MFU unless `config.peak_flops_per_device` supplies one.
"""
from __future__ import annotations

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
