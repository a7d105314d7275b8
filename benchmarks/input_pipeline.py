"""Input pipeline throughput per core, against named baselines, and a flat-memory check.

    python benchmarks/input_pipeline.py                      # default run, ~2-3 minutes
    python benchmarks/input_pipeline.py --sizes 448 --seconds 5 --records 0   # throughput only
    python benchmarks/input_pipeline.py --images 0 --records 1000000          # memory only
    python benchmarks/input_pipeline.py --records 0 --sizes 320 --workers 1,2,4   # readers at 320

Throughput: ~200 natural-looking JPEGs (1/f-noise backgrounds with flat-coloured shapes, 512 px
on the long side, several aspect ratios, quality 95) are written as an sw_zoo dataset and read
back at each training size. Every figure is images per CPU-second of this process and its child
processes (grain's workers), so "per core" and robust to other load on a shared machine;
wall-clock images/s and the cores kept busy (CPU-s per wall-s) are printed alongside.

  ceiling   simplejpeg.decode_jpeg of the same bytes, nothing else (one thread)
  PIL loop  Image.open(path).convert('RGB').resize((S, S), BICUBIC).transpose(FLIP), np.asarray
  augment   records.decode_image + make_augmenter(spec) in a plain loop (one thread); each also
            with decode_image(fast=True) (libjpeg-turbo fast IDCT + upsampling)
  pipeline  make_train_dataset(..., num_threads=1 | 2[, fast_decode=True]) batches of 32 over
            --pipeline-records records: record read, msgpack, decode, augment, batching, grain
            threads; then the same with num_workers=1 | 2 worker processes of --worker-threads
            threads each (IPC through /dev/shm, batches interleaved back in order)
  summary   per size: ceiling, threads=1|2, workers=1|2 (exact decode): img/s wall, img/CPU-s and
            img/CPU-s / ceiling, the figure to multiply by a host's cores

Pipelines are warmed up for --warmup wall seconds (worker start-up, buffers drained to steady
state) before the CPU clock starts.

Memory: `--records` tiny records are streamed through `make_train_dataset` (plain shuffle, then
repeat-factor sampling) while RSS is sampled from /proc/self/statm after every batch; the peak
is compared with the RSS after the first 1k examples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import simplejpeg
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sw_zoo.data import augment, pipeline, records  # noqa: E402
from sw_zoo.data.dataset_info import SELECTED_TAGS_FILENAME, write_dataset_info  # noqa: E402
from sw_zoo.data.shard_writer import ShardWriter  # noqa: E402
from sw_zoo.data.vocab import Tag, write_selected_tags  # noqa: E402

NUM_TAGS = 64
SPECS = {
    # What SW-style training at 448 / 320 would use: letterbox, mild random resized crop, flip.
    "rrc": {"ops": "letterbox,rrc,flip", "rrc_scale": (0.87, 1.0)},
    # The same with JAX-CV's random filter per example.
    "rrc+methods": {"ops": "letterbox,rrc,flip", "rrc_scale": (0.87, 1.0),
                    "resize_methods": "bilinear,bicubic,lanczos,box"},
    # Every op.
    "full": {"ops": "letterbox,rrc,flip,rotate,cutout", "rrc_scale": (0.87, 1.0),
             "resize_methods": "bilinear,bicubic,lanczos,box", "rotate_deg": 10,
             "rotate_prob": 0.5, "cutout_prob": 0.5},
}
SHAPES = ((512, 512), (512, 384), (384, 512), (512, 448), (448, 512), (512, 320))  # (h, w)


# ---- Data ---------------------------------------------------------------------------------------

def natural_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """1/f (pink) noise per channel, like photographs' spectra, plus flat shapes with outlines,
  like illustrations. Compresses to ~100 KB at 512 px / quality 95, as real images do."""
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  inv_f = 1.0 / np.maximum(np.sqrt(fy**2 + fx**2), 1.0 / max(height, width))
  channels = []
  for _ in range(3):
    spectrum = (rng.normal(size=inv_f.shape) + 1j * rng.normal(size=inv_f.shape)) * inv_f
    channels.append(np.fft.irfft2(spectrum, s=(height, width)))
  x = np.stack(channels, -1)
  x = (x - x.mean()) / x.std() * 45 + rng.uniform(90, 170, size=3)
  x += rng.normal(0, 2.5, size=x.shape)  # sensor-like grain
  image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(3, 9))):
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    w, h = rng.uniform(20, width / 2), rng.uniform(20, height / 2)
    fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
    box = (x0, y0, x0 + w, y0 + h)
    if rng.random() < 0.5:
      draw.ellipse(box, fill=fill, outline=(20, 20, 20), width=3)
    else:
      draw.polygon([(x0, y0), (x0 + w, y0 + h / 3), (x0 + w / 3, y0 + h)], fill=fill,
                   outline=(20, 20, 20))
  return np.asarray(image)


def write_dataset(out_dir: str, images_bytes, *, num_examples: int, seed: int,
                  shard_size: int = 10_000) -> None:
  """An sw_zoo dataset whose record i holds images_bytes[i % len] and a few random tags."""
  rng = np.random.default_rng(seed)
  tag_p = 1.0 / np.arange(1, NUM_TAGS + 1)  # long-tailed
  tag_p = tag_p / tag_p.sum()
  counts = np.zeros(NUM_TAGS, np.int64)
  with ShardWriter(out_dir, "train", shard_size) as writer:
    for i in range(num_examples):
      labels = np.unique(rng.choice(NUM_TAGS, size=int(rng.integers(1, 6)), p=tag_p))
      counts[labels] += 1
      writer.write(records.encode_record({"id": i, "image": images_bytes[i % len(images_bytes)],
                                          "labels": labels}))
  write_selected_tags(os.path.join(out_dir, SELECTED_TAGS_FILENAME),
                      [Tag(name=f"tag_{t}", category=0, count=int(counts[t]))
                       for t in range(NUM_TAGS)])
  write_dataset_info(out_dir, {"schema_version": records.SCHEMA_VERSION, "source": "benchmark",
                               "image_size": None, "num_labels": NUM_TAGS,
                               "splits": {"train": {"num_examples": num_examples,
                                                    "shards": writer.filenames}}})


# ---- Timing -------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue  # exited while we looked
      children.setdefault(ppid, []).append(int(entry))
  found, todo = [], [root]
  while todo:
    for child in children.get(todo.pop(), []):
      found.append(child)
      todo.append(child)
  return found


def cpu_seconds(pids) -> float:
  """CPU time (user + system) of this process and of `pids` (its descendants: grain's worker
  processes do the decoding when num_workers > 0, and their CPU is part of the cost)."""
  total = time.process_time()
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue  # exited: its CPU can no longer be read (none exit inside a window)
    total += (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (stat fields 14, 15)
  return total


def timed(step, seconds: float, warmup: float = 0.0) -> tuple[float, float, float]:
  """Calls step() (which returns how many images it handled) until `seconds` of CPU time have
  passed; returns (images per CPU-second, images per wall-second, cores busy = CPU-s / wall-s).

  Warm-up: one call, then more for `warmup` wall seconds. A pipeline then has started its
  workers and drained its prefetch buffers (the consumer here is faster than any reader), so
  they are near-empty both when the clock starts and when it stops: read-ahead done before the
  window is not billed as free images. The CPU clock (which reads /proc) is checked every 0.1 s
  of wall time, not every call, so checking costs nothing measurable.
  """
  step()
  end = time.perf_counter() + warmup
  while time.perf_counter() < end:
    step()
  pids = _descendants(os.getpid())  # the workers exist by now
  images, cpu0, wall0 = 0, cpu_seconds(pids), time.perf_counter()
  next_check = wall0
  while True:
    images += step()
    now = time.perf_counter()
    if now >= next_check:
      if cpu_seconds(pids) - cpu0 >= seconds:
        break
      next_check = now + 0.1
  cpu, wall = cpu_seconds(pids) - cpu0, time.perf_counter() - wall0
  return images / cpu, images / wall, cpu / wall


def cycle(items):
  state = {"i": 0}

  def next_item():
    item = items[state["i"] % len(items)]
    state["i"] += 1
    return item
  return next_item


def measure_throughput(args) -> None:
  rng = np.random.default_rng(0)
  tmp = tempfile.mkdtemp(prefix="sw_zoo_bench_")
  try:
    t0 = time.perf_counter()
    paths, blobs = [], []
    for i in range(args.images):
      h, w = SHAPES[i % len(SHAPES)]
      blob = simplejpeg.encode_jpeg(natural_image(rng, h, w), quality=95, colorsubsampling="420")
      path = os.path.join(tmp, f"img_{i:04d}.jpg")
      with open(path, "wb") as f:
        f.write(blob)
      paths.append(path)
      blobs.append(blob)
    data_dir = os.path.join(tmp, "dataset")
    os.makedirs(data_dir)
    # More records than images (record i holds image i % len): grain's index_shuffle costs
    # ~0.3 ms per example on a 48-record dataset and ~0.003 ms from ~100k records, so a tiny
    # dataset would bill the pipeline for an overhead real datasets do not have.
    write_dataset(data_dir, blobs, num_examples=max(len(blobs), args.pipeline_records), seed=1)
    print(f"{len(blobs)} JPEGs (long side 512, q95, mean {np.mean([len(b) for b in blobs]) / 1e3:.0f}"
          f" KB) written in {time.perf_counter() - t0:.1f} s")

    next_blob, next_path = cycle(blobs), cycle(paths)
    ceiling, ceiling_wall, ceiling_busy = timed(lambda: simplejpeg.decode_jpeg(next_blob()) is not None,
                                     args.seconds)
    print(f"\nceiling (simplejpeg decode only, 1 thread): {ceiling:7.1f} img/CPU-s "
          f"({ceiling_wall:.1f} img/s wall)")
    for size in args.sizes:
      print(f"\n== training size {size} ==")

      def pil_loop():
        with Image.open(next_path()) as im:
          out = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
          np.asarray(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        return 1
      pil, pil_wall, _ = timed(pil_loop, args.seconds)
      print(f"  {'PIL loop (1 thread)':44s} {pil:7.1f} img/CPU-s ({pil_wall:6.1f} wall)  "
            f"{pil / ceiling:.2f} of ceiling")
      for name, spec in SPECS.items():
        for fast in (False, True):
          fn = augment.make_augmenter(spec, size)
          gen = np.random.default_rng(0)
          per_core, wall, _ = timed(
              lambda: fn(records.decode_image(next_blob(), fast=fast), gen) is not None,
              args.seconds)
          label = f"augment {name}{', fast decode' if fast else ''} (1 thread)"
          print(f"  {label:44s} {per_core:7.1f} img/CPU-s "
                f"({wall:6.1f} wall)  {per_core / ceiling:.2f} of ceiling, "
                f"{per_core / pil:.2f}x PIL loop")
      # (label, num_workers, num_threads): in-process threads, then worker processes.
      readers = [(f"threads={t}", 0, t) for t in args.threads]
      readers += [(f"workers={w} x threads={args.worker_threads}", w, args.worker_threads)
                  for w in args.workers]
      summary = [("decode ceiling (1 thread)", ceiling_wall, ceiling, ceiling_busy)]
      for reader, workers, threads in readers:
        for fast in (False, True):
          it = iter(pipeline.make_train_dataset(
              data_dir, global_batch_size=32, image_size=size, seed=0, augment_spec=SPECS["rrc"],
              num_threads=threads, prefetch_batches=2 * threads, fast_decode=fast,
              num_workers=workers))
          per_core, wall, busy = timed(lambda: len(next(it)["image"]), args.seconds,
                                       warmup=args.warmup)
          it.close()  # stops worker processes now, so none is left running into the next row
          label = f"pipeline rrc{', fast decode' if fast else ''}, {reader}"
          print(f"  {label:44s} {per_core:7.1f} img/CPU-s "
                f"({wall:6.1f} wall, {busy:.2f} cores)  {per_core / ceiling:.2f} of ceiling, "
                f"{per_core / pil:.2f}x PIL loop")
          if not fast:
            summary.append((reader, wall, per_core, busy))
      print(f"\n  summary, size {size} (pipeline rrc, exact decode, batches of 32):")
      print(f"  {'reader':32s} {'img/s wall':>10s} {'cores busy':>10s} {'img/CPU-s':>10s}"
            f" {'per core / ceiling':>19s}")
      for label, wall, per_core, busy in summary:
        print(f"  {label:32s} {wall:10.1f} {busy:10.2f} {per_core:10.1f} "
              f"{per_core / ceiling:19.2f}")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


# ---- Memory -------------------------------------------------------------------------------------

def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory(args) -> None:
  tmp = tempfile.mkdtemp(prefix="sw_zoo_mem_")
  try:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    blobs = [simplejpeg.encode_jpeg(natural_image(rng, 48, 48), quality=90) for _ in range(500)]
    write_dataset(tmp, blobs, num_examples=args.records, seed=2)
    print(f"\n{args.records} records (48 px JPEGs, {NUM_TAGS} long-tailed tags) written in "
          f"{time.perf_counter() - t0:.1f} s")
    batch = 250
    for name, kwargs in (("shuffle", {}), ("repeat factors t=0.05", {"repeat_factor_threshold": 0.05})):
      t0 = time.perf_counter()
      it = iter(pipeline.make_train_dataset(tmp, global_batch_size=batch, image_size=32, seed=0,
                                            num_threads=2, prefetch_batches=4, **kwargs))
      seen, after_1k, peak = 0, None, 0.0
      while seen < args.records:
        seen += len(next(it)["image"])
        rss = rss_mb()
        if after_1k is None and seen >= 1000:
          after_1k = rss
        peak = max(peak, rss)
      print(f"  {name:22s} {seen} examples in {time.perf_counter() - t0:5.1f} s: RSS after 1k "
            f"{after_1k:.0f} MB, peak {peak:.0f} MB, end {rss:.0f} MB "
            f"(peak - after 1k = {peak - after_1k:+.1f} MB)")
      del it
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=200, help="JPEGs for throughput (0: skip)")
  parser.add_argument("--pipeline-records", type=int, default=2000,
                      help="records in the throughput dataset (cycling through the JPEGs)")
  parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                      default=[448, 320], help="training sizes, comma-separated")
  parser.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")],
                      default=[1, 2], help="grain num_threads values for the in-process pipeline")
  parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",") if v],
                      default=[1, 2], help="num_workers values (worker processes) to time")
  parser.add_argument("--worker-threads", type=int, default=1,
                      help="grain num_threads inside each worker process")
  parser.add_argument("--warmup", type=float, default=2.0,
                      help="wall seconds each pipeline runs before its CPU clock starts")
  parser.add_argument("--seconds", type=float, default=2.5,
                      help="CPU seconds per measurement")
  parser.add_argument("--records", type=int, default=100_000,
                      help="records streamed for the memory check (0: skip)")
  args = parser.parse_args()
  load = os.getloadavg()
  print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
  if args.images:
    measure_throughput(args)
  if args.records:
    measure_memory(args)
  load = os.getloadavg()
  print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
  main()
