"""Training and inference images/s of sw_zoo's eca_nfnet_l0 against timm's, same machine, one run.

  python benchmarks/nfnet_vs_timm.py                       # CPU: batch 16 at 224 (issue 3's setting)
  python benchmarks/nfnet_vs_timm.py --batch 256 --dtype bfloat16 --steps 20   # on a GPU: bf16 vs AMP

Baseline: timm's eca_nfnet_l0 in PyTorch (train: SGD step on summed BCE; inference: no_grad
forward), with as many threads as cores. Ours: the same step jitted in JAX, with the grouped-conv
implementation picked per backend (conv_impl='auto'), or forced with --conv-impl. Prints
images/s for both and the ratio ours / timm; on a GPU also achieved TFLOP/s and MFU.

The two frameworks are timed in alternating rounds inside one process (median over rounds), so a
load change on a shared machine hits both sides alike instead of skewing the ratio.
"""
from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np

# Dense bf16 peak TFLOP/s per card, for MFU. Spec-sheet numbers (SXM, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _once(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def time_interleaved(fns: dict, rounds: int, warmup: int) -> dict[str, float]:
  """Median seconds per call of each fn, calling them in turn every round (first calls compile
  or autotune and are not timed)."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  samples = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      samples[name].append(_once(fn))
  return {name: float(np.median(v)) for name, v in samples.items()}


def bench_jax(args, images_u8, labels):
  import jax
  import jax.numpy as jnp
  import optax

  from sw_zoo.models import create_model

  dtype = jnp.dtype(args.dtype)
  model = create_model("l0", act="silu", attn="eca", num_classes=args.num_classes, dtype=dtype, conv_impl=args.conv_impl)
  params = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, args.res, args.res, 3)), train=False)["params"])()
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)
  x = jax.device_put(images_u8)
  y = jax.device_put(labels)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x.astype(jnp.float32), train=True)
      return optax.sigmoid_binary_cross_entropy(logits, y).sum(-1).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  infer = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x.astype(jnp.float32), train=False)))
  state = {"p": params, "o": opt_state}

  def train_once():
    state["p"], state["o"], loss = train_step(state["p"], state["o"], x, y)
    loss.block_until_ready()

  infer_once = lambda: infer(state["p"], x).block_until_ready()
  flops = None
  try:
    cost = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(state["p"], x.astype(jnp.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is best effort; some backends do not report it
    pass
  return train_once, infer_once, flops, jax.devices()[0]


def bench_torch(args, images_u8, labels):
  from sw_zoo.models.timm_compat import import_timm

  timm = import_timm()
  import torch

  device = "cuda" if args.torch_device == "cuda" else "cpu"
  torch.set_num_threads(os.cpu_count() or 1)
  model = timm.create_model("eca_nfnet_l0", pretrained=False, num_classes=args.num_classes).to(device)
  mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
  std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
  x = (torch.from_numpy(images_u8).to(device).permute(0, 3, 1, 2).float() - mean) / std
  y = torch.from_numpy(labels).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  amp = args.dtype != "float32" and device == "cuda"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def train_once():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
      logits = model(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").sum(-1).mean()
    loss.backward()
    opt.step()
    sync()

  def train_mode_once():
    model.train()
    train_once()

  def infer_once():
    model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
      torch.sigmoid(model(x))
    sync()

  return train_mode_once, infer_once


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--res", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--steps", type=int, default=5, help="timed alternating rounds (median reported)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="JAX compute dtype; bfloat16 also turns on torch AMP on CUDA")
  p.add_argument("--conv-impl", default="auto", choices=["auto", "native", "einsum"])
  p.add_argument("--torch-device", default="auto", choices=["auto", "cpu", "cuda"])
  p.add_argument("--skip-torch", action="store_true")
  args = p.parse_args()
  if args.torch_device == "auto":
    import jax
    args.torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch, args.res, args.res, 3), dtype=np.uint8)
  labels = (rng.random((args.batch, args.num_classes)) < 0.02).astype(np.float32)

  fns = {}
  fns["ours_train"], fns["ours_infer"], flops, device = bench_jax(args, images, labels)
  if not args.skip_torch:
    fns["timm_train"], fns["timm_infer"] = bench_torch(args, images, labels)
  t = time_interleaved(fns, args.steps, args.warmup)
  print(f"device: {device.device_kind} ({device.platform}); batch {args.batch} at {args.res} px, {args.dtype}, "
        f"conv_impl={args.conv_impl}; {args.steps} alternating rounds, median")
  print(f"sw_zoo eca_nfnet_l0  train {args.batch / t['ours_train']:8.1f} img/s   infer {args.batch / t['ours_infer']:8.1f} img/s")
  if flops:
    # Training ~ 3x the forward FLOPs (forward + two backward matmuls per layer).
    train_tflops = 3 * flops / t["ours_train"] / 1e12
    line = f"  forward {flops / args.batch / 1e9:.2f} GFLOP/img; achieved train {train_tflops:.3f} TFLOP/s"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device.device_kind), None)
    if peak and device.platform == "gpu":
      line += f", MFU {train_tflops / peak:.1%} of {peak:.0f} TFLOP/s bf16 peak"
    print(line)
  if args.skip_torch:
    return
  print(f"timm   eca_nfnet_l0  train {args.batch / t['timm_train']:8.1f} img/s   infer {args.batch / t['timm_infer']:8.1f} img/s "
        f"(torch, {args.torch_device})")
  print(f"ratio sw_zoo / timm: train {t['timm_train'] / t['ours_train']:.2f}x   "
        f"infer {t['timm_infer'] / t['ours_infer']:.2f}x   (baseline: timm)")


if __name__ == "__main__":
  main()
