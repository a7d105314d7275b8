"""Peak memory of `python -m data_prep folder` while it converts N images (issue 4: "peak memory
while preparing 100k images stays flat").

    python benchmarks/prepare_memory.py                 # N = 100000 tiny images, ~10 minutes
    python benchmarks/prepare_memory.py --n 20000 --workers 2

Writes N 32x32 JPEGs (a few distinct noise images, tiled into 1000-file sub-folders) with .txt
captions (a rating plus 3-8 tags from a 2000-tag long-tailed vocabulary) into a temp folder,
runs the folder conversion as a subprocess, and samples the RSS of it and all its worker
processes (psutil) every --interval seconds. Items done are estimated from the finished-shard
progress records in the output folder (shard size 1000). Prints the peak RSS (the parent alone,
and the parent + workers summed at the same instant) reached by each checkpoint, and last/first.
"""

from __future__ import annotations

import argparse
import glob
import io
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VOCAB = 2000
PER_DIR = 1000


def _write_chunk(args) -> int:
  root, start, stop, seed = args
  rng = np.random.default_rng(seed)
  blobs = []
  for _ in range(16):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG",
                                                                             quality=90)
    blobs.append(buf.getvalue())
  p = 1.0 / np.arange(1, NUM_VOCAB + 1)
  p /= p.sum()
  for i in range(start, stop):
    folder = os.path.join(root, f"d{i // PER_DIR:04d}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"img{i:07d}.jpg"), "wb") as f:
      f.write(blobs[i % len(blobs)])
    tags = rng.choice(NUM_VOCAB, size=int(rng.integers(3, 9)), replace=False, p=p)
    caption = ", ".join([f"rating:{'gsqe'[i % 4]}"] + [f"tag {t}" for t in tags])
    with open(os.path.join(folder, f"img{i:07d}.txt"), "w") as f:
      f.write(caption)
  return stop - start


def make_images(root: str, n: int, procs: int) -> None:
  step = 5000
  chunks = [(root, s, min(n, s + step), s) for s in range(0, n, step)]
  with mp.Pool(procs) as pool:
    for _ in pool.imap_unordered(_write_chunk, chunks):
      pass


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
  """(RSS of proc, RSS of proc + all descendants), bytes."""
  try:
    own = proc.memory_info().rss
  except psutil.Error:
    return 0, 0
  total = own
  for child in proc.children(recursive=True):
    try:
      total += child.memory_info().rss
    except psutil.Error:
      pass
  return own, total


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, default=100_000, help="images to generate and convert")
  parser.add_argument("--workers", type=int, default=None, help="data_prep --workers")
  parser.add_argument("--gen-procs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
  parser.add_argument("--interval", type=float, default=0.25, help="RSS sampling period, s")
  parser.add_argument("--keep", action="store_true", help="keep the temp folder")
  args = parser.parse_args()
  checkpoints = sorted({c for c in (1_000, 10_000, 50_000, 100_000, args.n) if c <= args.n})

  tmp = tempfile.mkdtemp(prefix="sw_zoo_prepmem_")
  root, out = os.path.join(tmp, "images"), os.path.join(tmp, "dataset")
  try:
    t0 = time.perf_counter()
    make_images(root, args.n, args.gen_procs)
    print(f"{args.n} images (32x32 JPEG) + captions written in {time.perf_counter() - t0:.1f} s")

    cmd = [sys.executable, "-m", "data_prep", "folder", root, "--out", out, "--no-progress",
           "--shard-size", "1000"]
    if args.workers:
      cmd += ["--workers", str(args.workers)]
    print("running:", " ".join(cmd))
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc = psutil.Process(child.pid)
    peak_own = peak_tree = 0
    reached: dict[int, tuple[int, int, float]] = {}
    scan_peak = None
    samples = 0
    while child.poll() is None:
      own, tree = tree_rss(proc)
      peak_own, peak_tree = max(peak_own, own), max(peak_tree, tree)
      samples += 1
      done = len(glob.glob(os.path.join(out, "_prepare", "*-[0-9][0-9][0-9][0-9][0-9].json"))) * 1000
      if done and scan_peak is None:
        scan_peak = (peak_own, peak_tree, time.perf_counter() - t0)
      for c in checkpoints:
        if c not in reached and done >= c:
          reached[c] = (peak_own, peak_tree, time.perf_counter() - t0)
      time.sleep(args.interval)
    output = child.stdout.read().decode(errors="replace")
    elapsed = time.perf_counter() - t0
    if child.returncode != 0:
      print(output)
      raise SystemExit(f"data_prep exited with {child.returncode}")
    reached.setdefault(args.n, (peak_own, peak_tree, elapsed))
    print(f"converted in {elapsed:.1f} s, {samples} RSS samples")
    if scan_peak:
      print(f"  before the first shard finished (scan): peak parent {scan_peak[0] / 2**20:6.1f} MB,"
            f" parent+workers {scan_peak[1] / 2**20:6.1f} MB  (t={scan_peak[2]:.0f} s)")
    for c in checkpoints:
      if c in reached:
        own, tree, t = reached[c]
        print(f"  peak by {c:>7d} items: parent {own / 2**20:6.1f} MB, "
              f"parent+workers {tree / 2**20:6.1f} MB  (t={t:.0f} s)")
    first = reached[min(reached)]
    last = reached[max(reached)]
    print(f"  last/first: parent {last[0] / first[0]:.3f}, parent+workers {last[1] / first[1]:.3f}")
  finally:
    if args.keep:
      print("kept", tmp)
    else:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
