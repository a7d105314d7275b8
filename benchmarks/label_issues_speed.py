"""Speed and memory of sw_zoo.curation.label_issues against cleanlab, one run.

  python benchmarks/label_issues_speed.py
  python benchmarks/label_issues_speed.py --images 20000 --tags 300 --big-images 200000 --big-tags 4000

1. Same inputs to both (synthetic labels with 5% flips, informative probabilities): cleanlab's
   `find_multilabel_issues_per_class` (the baseline; what SW-CV-ModelZoo's script calls) against
   `find_label_issues`; prints both times, the ratio, and whether the flags are identical.
2. A larger, booru-like problem (long-tailed tags, 10% of true tags missing) streamed from a float32 .npy memmap (as `sw-zoo find-missing-tags` reads
   predictions): wall time and the peak memory the call allocates (tracemalloc) against the
   size of the matrix.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sw_zoo.curation.label_issues import find_label_issues, flag_matrix  # noqa: E402


def problem(n: int, t: int, seed: int = 0, *, booru: bool = False):
  """booru=False: tag frequencies 0.5-30%, 5% of all labels flipped (a hard, dense case).
  booru=True: long-tailed frequencies (0.05-5%, ~25 tags per image at 2000 tags), 10% of true
  tags missing and 0.05% of absent ones added, closer to a real booru's noise."""
  rng = np.random.default_rng(seed)
  if booru:
    freq = np.exp(rng.uniform(np.log(5e-4), np.log(5e-2), t))
    truth = rng.random((n, t)) < freq
    given = (truth & (rng.random((n, t)) >= 0.10)) | (~truth & (rng.random((n, t)) < 5e-4))
  else:
    truth = rng.random((n, t)) < rng.uniform(0.005, 0.3, t)
    given = truth ^ (rng.random((n, t)) < 0.05)
  # A booru tagger is called wrong on ~0.2% of absent tags (logit -3.5 +- 1.2); the dense case is harsher.
  margin, spread = (3.5, 1.2) if booru else (2.0, 1.3)
  probs = (1 / (1 + np.exp(-(np.where(truth, margin, -margin) + rng.normal(0, spread, (n, t)))))).astype(np.float32)
  return given, probs


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--images", type=int, default=20000)
  p.add_argument("--tags", type=int, default=300)
  p.add_argument("--big-images", type=int, default=200000)
  p.add_argument("--big-tags", type=int, default=2000)
  args = p.parse_args()

  given, probs = problem(args.images, args.tags)
  from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

  labels = [list(np.flatnonzero(r)) for r in given]
  t = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    expected = find_multilabel_issues_per_class(labels, probs.astype(np.float64))
  t_cleanlab = time.perf_counter() - t
  t = time.perf_counter()
  found = find_label_issues(given, probs.astype(np.float64))
  t_ours = time.perf_counter() - t
  same = bool((flag_matrix(found, given.shape) == expected).all())
  print(f"{args.images} images x {args.tags} tags: cleanlab {t_cleanlab:.2f} s, sw_zoo {t_ours:.3f} s "
        f"-> {t_cleanlab / t_ours:.0f}x faster (baseline: cleanlab); identical flags: {same} ({len(found)} flags)")
  del given, probs, labels, expected

  n, tags = args.big_images, args.big_tags
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "probs.npy")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, tags))
    given_big = np.zeros((n, tags), bool)
    for a in range(0, n, 10000):
      g, pr = problem(min(10000, n - a), tags, seed=a + 1, booru=True)
      out[a:a + len(g)] = pr
      given_big[a:a + len(g)] = g
    out.flush()
    del out
    probs_map = np.load(path, mmap_mode="r")
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    t = time.perf_counter()
    found = find_label_issues(given_big, probs_map)
    seconds = time.perf_counter() - t
    grew = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
  size_mb = n * tags * 4 / 2**20
  print(f"{n} images x {tags} tags streamed from a {size_mb:.0f} MB float32 memmap: {seconds:.1f} s "
        f"({n / seconds:.0f} images/s), peak memory allocated during the call {grew:.0f} MB "
        f"(the input label matrix, {n * tags / 2**20:.0f} MB of bools, was already in memory); {len(found)} flags")


if __name__ == "__main__":
  main()
