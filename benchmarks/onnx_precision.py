"""ONNX precision: img/s of the fp32, fp16 and int8 exports (`onnx_precision.convert`, what
`sw-zoo export --precision` ships) in onnxruntime on the CPU, against fp32 as the baseline.

    python benchmarks/onnx_precision.py                             # l0_silu_eca at 320 px, ~3 min
    python benchmarks/onnx_precision.py --model tiny --image-size 128 --seconds 2

The model has random weights (speed does not depend on the values; the score differences are
only a sanity check here, the export measures agreement on real validation images). All graphs
get the same batch of smooth pictures; rounds alternate between the graphs so load from other
jobs on a shared machine hits all alike, and the median round counts. Also timed, to back the
choice made in `onnx_precision`: int8 weights per channel (quantize_dynamic's default weight
type) beside the shipped uint8 weights per channel.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sw_zoo.inference import onnx_export, onnx_precision  # noqa: E402
from sw_zoo.models import model_config  # noqa: E402
from sw_zoo.models.spec import ModelSpec  # noqa: E402
from benchmarks.random_bundle import random_params  # noqa: E402


def _pictures(count: int, size: int, seed: int = 0) -> np.ndarray:
  """Smooth gradients with a bright block: closer to real images than noise for quantisation."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  out = []
  for _ in range(count):
    a, b, c = rng.uniform(0, 255, 3)
    image = np.stack([a * x, b * y, c * (1 - x) * y], -1)
    x0, y0 = rng.integers(0, size // 2, 2)
    image[y0:y0 + size // 3, x0:x0 + size // 3] = rng.uniform(0, 255, 3)
    out.append(image.clip(0, 255).astype(np.uint8))
  return np.stack(out)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="l0_silu_eca")
  p.add_argument("--image-size", type=int, default=320)
  p.add_argument("--tags", type=int, default=9083, help="outputs (WD v3 taggers have ~10k)")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per graph")
  args = p.parse_args()

  name, _, rest = args.model.partition("_")
  act, _, attn = rest.partition("_")
  spec = ModelSpec(name=name, num_tags=args.tags, act=act or None, attn=attn or None, dtype="float32")
  cfg = model_config(spec.name, act=spec.act, attn=spec.attn)
  start = time.perf_counter()
  f32 = onnx_export.to_onnx(cfg, random_params(spec), image_size=args.image_size).SerializeToString()
  graphs = {"fp32": f32}
  for precision in ("fp16", "int8"):
    graphs[precision] = onnx_precision.convert(f32, precision)
  from onnxruntime.quantization import QuantType, quantize_dynamic
  import onnx

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "s8.onnx")
    quantize_dynamic(onnx.load_from_string(f32), path, weight_type=QuantType.QInt8, per_channel=True)
    with open(path, "rb") as f:
      graphs["int8 with int8 weights"] = f.read()
  print(f"{args.model} at {args.image_size} px, {args.tags} tags: graphs built and converted in "
        f"{time.perf_counter() - start:.0f} s; onnxruntime CPU, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs")

  images = _pictures(args.batch_size, args.image_size)
  sessions = {k: onnx_precision.session(v) for k, v in graphs.items()}
  x = onnx_export.wd_input(images)
  scores = {k: s.run(None, {s.get_inputs()[0].name: x})[0] for k, s in sessions.items()}
  rates = onnx_precision.speed(sessions, images, seconds=args.seconds)
  base = rates["fp32"]
  print(f"{'graph':<28} {'MB':>7} {'img/s':>8} {'vs fp32':>8} {'max |score diff|':>17}")
  for key in graphs:
    diff = float(np.abs(scores[key] - scores["fp32"]).max())
    print(f"{key:<28} {len(graphs[key]) / 1e6:7.1f} {rates[key]:8.2f} {rates[key] / base:7.2f}x {diff:17.2e}")
  print(f"(score std across tags and images, fp32: {scores['fp32'].std():.3f})")


if __name__ == "__main__":
  main()
