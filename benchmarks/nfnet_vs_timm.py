"""Training and inference images/s of sw_zoo's eca_nfnet_l0 against timm's, same machine, one run.

  python benchmarks/nfnet_vs_timm.py                       # CPU: batch 16 at 224 (issue 3's setting), ~2.5 min
  python benchmarks/nfnet_vs_timm.py --isolated 0          # both in one process, interleaved: quicker, disturbed
  python benchmarks/nfnet_vs_timm.py --batch 256 --dtype bfloat16 --steps 20   # on a GPU: bf16 vs AMP

Baseline: timm's eca_nfnet_l0 in PyTorch (train: SGD step on summed BCE; inference: no_grad
forward), with as many threads as cores. Ours: the same step jitted in JAX, with the grouped-conv
implementation picked per backend (conv_impl='auto'), or forced with --conv-impl. Prints
images/s for both and the ratio ours / timm; on a GPU also achieved TFLOP/s and MFU.

With `--isolated 0` the two frameworks are timed in alternating rounds inside one process (median
over rounds), so a load change on a shared machine hits both sides alike instead of skewing the
ratio. But on 2 cores the frameworks also disturb each other: PyTorch's OpenMP pool and XLA's Eigen pool
busy-wait after their work, so whoever runs next loses part of the machine. So by default
(`--isolated 2`) each framework is timed alone in its own process (N each, alternating; medians
of medians; inside a process each step is timed in a run of its own, see time_consecutive), as
users run them: the figure to quote. `--gap S` (idle seconds before each call) is the in-process middle way.

To say what ratio is reachable at all, the run also times a large square f32 matmul in each
framework (the machine's practical FLOP/s ceiling: a convolution network seldom runs its FLOPs
faster than a 4096^3 GEMM) and prints each model's achieved GFLOP/s as a fraction of it.
FLOPs are XLA's count for our forward (multiply-add = 2); training counts 3x the forward.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

# Dense bf16 peak TFLOP/s per card, for MFU. Spec-sheet numbers (SXM, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _once(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def time_interleaved(fns: dict, rounds: int, warmup: int, gap: float = 0.0) -> dict[str, float]:
  """Median seconds per call of each fn, calling them in turn every round (first calls compile
  or autotune and are not timed). `gap` seconds of idle before each timed call let the other
  framework's worker threads stop spinning (OpenMP and Eigen pools busy-wait after a parallel
  region; on 2 cores a spinning pool steals half the machine from whoever runs next)."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  samples = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      time.sleep(gap)
      samples[name].append(_once(fn))
  return {name: float(np.median(v)) for name, v in samples.items()}


def gemm_ceiling_fns(n: int, device: str | None, with_jax: bool = True):
  """One n x n x n f32 matmul per call in JAX and/or torch (same work for both)."""
  fns = {}
  if with_jax:
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    fns["jax_gemm"] = lambda: dot(a, a).block_until_ready()
  if device:
    import torch
    t = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fns["torch_gemm"] = lambda: (torch.mm(t, t), sync())
  return fns


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
    # Wait for every output: on XLA:CPU the loss can be ready while the update is still being
    # written, which would bill that tail to whatever is timed next.
    jax.block_until_ready((state["p"], state["o"], loss))

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
  # The timm import shim is test support, not library code: it lives in tests/.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from tests.timm_compat import import_timm

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


def time_consecutive(fns: dict, rounds: int, warmup: int) -> dict[str, float]:
  """Median seconds per call, each fn called `rounds` times in a row: a step's tail (XLA:CPU keeps
  the machine busy ~0.3 s after a train step's outputs are ready here, likely freeing buffers) is
  then billed to that step itself, as in a training loop, not to whatever is timed next."""
  out = {}
  for name, fn in fns.items():
    for _ in range(warmup):
      fn()
    out[name] = float(np.median([_once(fn) for _ in range(rounds)]))
  return out


def measure(args) -> tuple[dict[str, float], float | None, str, str]:
  """Median seconds per call of each timed fn (see time_interleaved), forward FLOPs, device."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch, args.res, args.res, 3), dtype=np.uint8)
  labels = (rng.random((args.batch, args.num_classes)) < 0.02).astype(np.float32)
  fns, flops, device_kind, platform = {}, None, "cpu", args.torch_device
  with_jax, with_torch = args.only in (None, "jax"), args.only in (None, "torch") and not args.skip_torch
  if with_jax:
    fns["ours_train"], fns["ours_infer"], flops, device = bench_jax(args, images, labels)
    device_kind, platform = device.device_kind, device.platform
  if with_torch:
    fns["timm_train"], fns["timm_infer"] = bench_torch(args, images, labels)
  if args.gemm:
    fns.update(gemm_ceiling_fns(args.gemm, args.torch_device if with_torch else None, with_jax=with_jax))
  if args.only:  # a child of --isolated: alone on the machine, so no interleaving needed
    return time_consecutive(fns, args.steps, args.warmup), flops, device_kind, platform
  return time_interleaved(fns, args.steps, args.warmup, args.gap), flops, device_kind, platform


def measure_isolated(args) -> tuple[dict[str, float], float | None, str, str]:
  """Each framework alone on the machine, as a user runs it: `args.isolated` child processes per
  framework, started in alternation (jax, torch, jax, torch, ...) so that slow drifts of the
  machine's load hit both; per fn, the median of the children's medians."""
  assert not args.only, "a child process never spawns children of its own"
  samples: dict[str, list[float]] = {}
  flops, device_kind, platform = None, "cpu", args.torch_device
  child, skip = [], False
  for a in sys.argv[1:]:  # the same options, minus --isolated N / --isolated=N and --hugetlb (inherited via env)
    if skip or a == "--hugetlb" or a.startswith("--isolated="):
      skip = False
      continue
    if a == "--isolated":
      skip = True
      continue
    child.append(a)
  for _ in range(args.isolated):
    for only in ("jax", "torch"):
      run = subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--only", only, "--emit-json"],
                           capture_output=True, text=True)
      if run.returncode:
        sys.exit(f"the {only} child process failed:\n{run.stderr[-4000:]}")
      out = run.stdout
      result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
      for name, seconds in result["times"].items():
        samples.setdefault(name, []).append(seconds)
      if only == "jax":
        flops, device_kind, platform = result["flops"], result["device_kind"], result["platform"]
  return {name: float(np.median(v)) for name, v in samples.items()}, flops, device_kind, platform


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--res", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--steps", type=int, default=5, help="timed alternating rounds (median reported)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--isolated", type=int, default=2, metavar="N",
                 help="time each framework alone in its own process, N processes each, alternating "
                      "(no interference between their thread pools; ~40 s per process); 0: both in this "
                      "process, interleaved")
  p.add_argument("--only", choices=["jax", "torch"], default=None, help=argparse.SUPPRESS)
  p.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--gap", type=float, default=0.0, help="with --isolated 0: idle seconds before each timed call")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="JAX compute dtype; bfloat16 also turns on torch AMP on CUDA")
  p.add_argument("--conv-impl", default="auto", choices=["auto", "native", "einsum"])
  p.add_argument("--torch-device", default="auto", choices=["auto", "cpu", "cuda"])
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--hugetlb", action="store_true",
                 help="re-run this process with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge "
                      "pages for malloc; both frameworks get it, as launch/local.sh gives CPU training)")
  p.add_argument("--gemm", type=int, default=4096, help="side of the square matmul timed as the FLOP/s ceiling (0: skip)")
  args = p.parse_args()
  if args.hugetlb and "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
    # glibc reads its tunables once at process start, so the setting needs a fresh process.
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
  if args.torch_device == "auto":
    import jax
    args.torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"

  if args.isolated and not args.only:
    t, flops, device_kind, platform = measure_isolated(args)
    how = f"each framework alone in its own process, {args.isolated} processes each, alternating; consecutive calls"
  else:
    t, flops, device_kind, platform = measure(args)
    if args.emit_json:
      print("RESULT " + json.dumps({"times": t, "flops": flops, "device_kind": device_kind, "platform": platform}))
      return
    how = "both frameworks in one process"
  print(f"device: {device_kind} ({platform}); batch {args.batch} at {args.res} px, {args.dtype}, "
        f"conv_impl={args.conv_impl}; {how}; {args.steps} alternating rounds, median; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
  gemm_flops = 2 * args.gemm ** 3
  gemms = {k.split("_")[0]: gemm_flops / t[k] for k in ("jax_gemm", "torch_gemm") if k in t}
  # The faster framework's GEMM is the ceiling for both: it is the same silicon.
  ceiling = max(gemms.values(), default=None)
  if ceiling:
    print(f"f32 GEMM {args.gemm}^3: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in gemms.items())
          + f"; ceiling = the faster, {ceiling / 1e9:.0f} GFLOP/s")

  def achieved(name: str, seconds: float) -> str:
    if not flops:
      return ""
    rate = (3 if name == "train" else 1) * flops / seconds
    frac = f" = {rate / ceiling:.0%} of the ceiling" if ceiling else ""
    return f" ({rate / 1e9:.0f} GFLOP/s{frac})"

  print(f"sw_zoo eca_nfnet_l0  train {args.batch / t['ours_train']:8.1f} img/s{achieved('train', t['ours_train'])}   "
        f"infer {args.batch / t['ours_infer']:8.1f} img/s{achieved('infer', t['ours_infer'])}")
  if flops:
    # Training ~ 3x the forward FLOPs (forward + two backward matmuls per layer).
    train_tflops = 3 * flops / t["ours_train"] / 1e12
    line = f"  forward {flops / args.batch / 1e9:.2f} GFLOP/img; achieved train {train_tflops:.3f} TFLOP/s"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device_kind), None)
    if peak and platform == "gpu":
      line += f", MFU {train_tflops / peak:.1%} of {peak:.0f} TFLOP/s bf16 peak"
    print(line)
  if "timm_train" not in t:
    return
  print(f"timm   eca_nfnet_l0  train {args.batch / t['timm_train']:8.1f} img/s{achieved('train', t['timm_train'])}   "
        f"infer {args.batch / t['timm_infer']:8.1f} img/s{achieved('infer', t['timm_infer'])} (torch, {args.torch_device})")
  print(f"ratio sw_zoo / timm: train {t['timm_train'] / t['ours_train']:.2f}x   "
        f"infer {t['timm_infer'] / t['ours_infer']:.2f}x   (baseline: timm)")
  if flops and ceiling:
    for name in ("train", "infer"):
      need = 1.5 * (3 if name == "train" else 1) * flops / t[f"timm_{name}"]
      print(f"  1.5x timm {name} would need {need / 1e9:.0f} GFLOP/s = {need / ceiling:.0%} of the GEMM ceiling")


if __name__ == "__main__":
  main()
