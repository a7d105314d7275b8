"""Tagging throughput: `sw-zoo tag` on each backend (JAX, onnxruntime) against onnxruntime called
directly on the same exported model, on the CPU.

    python benchmarks/tagging.py                                    # l0_silu_eca at 320 px, ~8 min
    python benchmarks/tagging.py --model tiny --image-size 128 --images 128 --rounds 2   # ~1 min

A bundle of the model with random weights (speed does not depend on the values) and --tags
outputs is written, with its model.onnx; --images JPEGs at booru-like sizes (800-1200 px on the
long side, several aspect ratios, quality 90) are written to a temp folder. Every path does the
whole job on every image: decode (`image_io.load_image`) + `preprocess_eval` on the same number
of threads, the forward pass in batches of --batch-size, thresholds and a caption file per image.

  sw-zoo tag (jax)    `tag_outputs.tag_files` with a warmed-up JAX Tagger (jit compiled beforehand;
                      the cold CLI figure, model load + compile included, is printed separately)
  sw-zoo tag (onnx)   the same with the onnxruntime backend (the bundle's model.onnx)
  onnxruntime direct  the baseline: the model.onnx in an InferenceSession (CPUExecutionProvider), fed
                      BGR float32 as WD-tagger tools do, with the same decode threads and captions

Rounds alternate between the paths so load from other jobs on a shared machine hits all alike;
the median round of each is reported, as images/s (wall clock) and images per CPU-second of this
process, with its ratio to the baseline. The scores of the paths are compared as a check.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from sw_zoo.inference import bundle as bundle_lib  # noqa: E402
from sw_zoo import cli  # noqa: E402
from sw_zoo.inference import captions, tag_outputs  # noqa: E402
from sw_zoo.inference import onnx_export  # noqa: E402
from sw_zoo.inference.tagger import Tagger  # noqa: E402
from benchmarks.random_bundle import write_random_bundle  # noqa: E402

SHAPES = ((1200, 900), (900, 1200), (1024, 1024), (1200, 800), (800, 1200), (1100, 1100))  # (h, w)


def _write_images(folder: str, count: int, seed: int = 0) -> list[str]:
  """Smooth colour fields with flat shapes and grain."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    h, w = SHAPES[i % len(SHAPES)]
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).copy()
    for _ in range(6):
      y, x = int(rng.integers(0, h - 100)), int(rng.integers(0, w - 100))
      image[y:y + int(rng.integers(40, 300)), x:x + int(rng.integers(40, 300))] = rng.integers(0, 256, 3)
    # Grain / texture, so files weigh what illustrations do (a few hundred kB) and decode alike.
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    path = os.path.join(folder, f"{i:05d}.jpg")
    Image.fromarray(image).save(path, quality=90)
    paths.append(path)
  return paths


def _timed(fn) -> tuple[float, float]:
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def run_onnxruntime(session, tagger: Tagger, files: list[str], style, batch_size: int, workers: int) -> np.ndarray:
  """The WD-tool path: same decode + preprocess threads, ORT forward, same decisions and captions."""
  name = session.get_inputs()[0].name
  all_scores = []
  with ThreadPoolExecutor(workers) as pool:
    prepared = pool.map(tagger.preprocess, files)  # runs ahead of the model, like the Tagger's pool
    for start in range(0, len(files), batch_size):
      chunk = files[start:start + batch_size]
      batch = np.stack([next(prepared) for _ in chunk])
      scores = session.run(None, {name: batch[..., ::-1].astype(np.float32)})[0]
      for path, row in zip(chunk, scores):
        captions.write_caption(path, captions.caption_tags(tagger.decide(row), style), style)
      all_scores.append(scores)
  return np.concatenate(all_scores)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="l0_silu_eca")
  parser.add_argument("--image-size", type=int, default=320)
  parser.add_argument("--tags", type=int, default=9083, help="outputs (WD v3 taggers: 10861; SW's: 2380-9083)")
  parser.add_argument("--images", type=int, default=96)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decode threads (both paths)")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  import onnxruntime as ort

  root = tempfile.mkdtemp(prefix="sw_zoo_tagging_bench.")
  try:
    t = time.perf_counter()
    bundle_dir = write_random_bundle(os.path.join(root, "bundle"), args.model, args.image_size, args.tags)
    t_onnx = time.perf_counter()
    onnx_path = os.path.join(bundle_dir, bundle_lib.ONNX_FILE)
    with open(onnx_path, "wb") as f:
      f.write(onnx_export.bundle_to_onnx_bytes(bundle_lib.read_bundle(bundle_dir)))
    bundle = bundle_lib.read_bundle(bundle_dir)
    print(f"bundle {args.model} {args.image_size}px {args.tags} tags: written in {t_onnx - t:.1f} s, "
          f"ONNX export {time.perf_counter() - t_onnx:.1f} s")
    folder = os.path.join(root, "images")
    os.makedirs(folder)
    files = _write_images(folder, args.images)
    megabytes = sum(os.path.getsize(p) for p in files) / 1e6
    print(f"{len(files)} JPEGs, {megabytes / len(files):.2f} MB each on average; batch {args.batch_size}, "
          f"{args.workers} decode threads; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"jax {jax.__version__} ({jax.default_backend()}), onnxruntime {ort.__version__}")

    for backend in ("jax", "onnx"):
      cold, _ = _timed(lambda: cli.main(["tag", folder, "--model", bundle_dir, "--batch_size", str(args.batch_size),
                                         "--max_data_loader_n_workers", str(args.workers), "--backend", backend,
                                         "--no-progress"]))
      print(f"sw-zoo tag --backend {backend}, cold (load + compile + tag): {cold:.1f} s = {len(files) / cold:.2f} img/s")

    style = captions.CaptionStyle()
    taggers = {name: Tagger(bundle, batch_size=args.batch_size, num_workers=args.workers, backend=name)
               for name in ("jax", "onnx")}
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    warm = files[:args.batch_size] + files[:len(files) % args.batch_size]  # every batch shape the run uses
    for tagger in taggers.values():
      tagger.scores(warm)
    run_onnxruntime(session, taggers["jax"], files[:args.batch_size], style, args.batch_size, args.workers)

    baseline = "onnxruntime direct"
    results = {"sw-zoo tag (jax)": [], "sw-zoo tag (onnx)": [], baseline: []}
    holder = {}
    for _ in range(args.rounds):
      for name, tagger in taggers.items():
        results[f"sw-zoo tag ({name})"].append(_timed(lambda: tag_outputs.tag_files(tagger, files, style,
                                                                                     show_progress=False)))
      results[baseline].append(_timed(lambda: holder.update(s=run_onnxruntime(
          session, taggers["jax"], files, style, args.batch_size, args.workers))))
    diffs = {name: float(np.abs(t.scores(files[:4]) - holder["s"][:4]).max()) for name, t in taggers.items()}

    rates = {}
    for name, rounds in results.items():
      wall = statistics.median(w for w, _ in rounds)
      cpu = statistics.median(c for _, c in rounds)
      rates[name] = (len(files) / wall, len(files) / cpu)
    bw, bc = rates[baseline]
    for name, (w, c) in rates.items():
      print(f"{name:20s} {w:7.2f} img/s   {c:7.2f} img/CPU-s   {w / bw:5.2f}x wall, {c / bc:5.2f}x per CPU-s of "
            f"{baseline}   (rounds: {', '.join(f'{r:.1f}s' for r, _ in results[name])})")
    print("max |score difference| vs onnxruntime direct: "
          + ", ".join(f"{name} {d:.1e}" for name, d in diffs.items()))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
