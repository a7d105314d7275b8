"""The NFNet-L stem's dense 3x3 convs, forward + both gradients: XLA's convolution (baseline)
against conv_cpu.conv2d_dense (XLA forward and input gradient, filter gradient as row-banded
im2col GEMMs in a scan), on this machine, in one run.

  python benchmarks/stem_convs.py                 # batch 16 at 224 px, as benchmarks/nfnet_vs_timm.py
  python benchmarks/stem_convs.py --batch 32 --res 320

Prints per conv and in total: milliseconds per fwd+bwd (median of alternating rounds), the ratio
dense / native, and the largest relative difference of the outputs and gradients.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sw_zoo.models import conv_cpu  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--res", type=int, default=224)
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  r = args.res
  # eca_nfnet_l0's deep_quad stem: 3->16 s2, 16->32, 32->64, 64->128 s2 (TF-style (0, 1) pad for s2).
  layers = [(r, 3, 16, 2), (r // 2, 16, 32, 1), (r // 2, 32, 64, 1), (r // 2, 64, 128, 2)]
  totals = {"native": 0.0, "dense": 0.0}
  print(f"batch {args.batch}, {args.res} px, f32, {jax.devices()[0].platform}; fwd + grads, median of {args.rounds} rounds")
  for h, cin, cout, s in layers:
    pad = ((1, 1), (1, 1)) if s == 1 else ((0, 1), (0, 1))
    x = jax.random.normal(jax.random.key(0), (args.batch, h, h, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.1
    fns = {}
    for name, conv in (("native", conv_cpu._native_conv), ("dense", conv_cpu.conv2d_dense)):
      fns[name] = jax.jit(jax.value_and_grad(lambda x, w, conv=conv: (conv(x, w, s, pad) ** 2).sum(), argnums=(0, 1)))
      jax.block_until_ready(fns[name](x, w))
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
      for name, fn in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(x, w))
        times[name].append(time.perf_counter() - t)
    med = {name: float(np.median(v)) for name, v in times.items()}
    ref, got = fns["native"](x, w), fns["dense"](x, w)
    err = max(float(jnp.abs(a - b).max() / jnp.abs(a).max()) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)))
    for name in totals:
      totals[name] += med[name]
    print(f"  {h:>3} px {cin:>3} -> {cout:>3} stride {s}: native {med['native'] * 1e3:7.1f} ms  dense {med['dense'] * 1e3:7.1f} ms  "
          f"ratio {med['dense'] / med['native']:.2f}  max rel diff {err:.1e}")
  print(f"stem total: native {totals['native'] * 1e3:.0f} ms, dense {totals['dense'] * 1e3:.0f} ms -> "
        f"{totals['dense'] / totals['native']:.2f}x the time (baseline: XLA's convolution)")


if __name__ == "__main__":
  main()
