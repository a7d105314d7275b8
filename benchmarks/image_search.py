"""recall@10 and query latency of `sw-zoo index`'s HNSW graph against exact search.

  python benchmarks/image_search.py --model RUN_OR_BUNDLE --data DATASET_DIR
  python benchmarks/image_search.py --model /tmp/sw_zoo_missing_tags/runs/fold-0 --data /tmp/sw_zoo_missing_tags/data

1. `sw-zoo index DATA --model M` embeds every image of the dataset (all splits) and builds the
   index; its own check (200 stored vectors as queries, self excluded) is printed.
2. On those embeddings: recall@10 of HNSW graphs against exact search (baseline: brute-force
   cosine over all vectors, one query at a time) for several `expansion_search` values, with the
   single-query latency of each and the speed-up over exact search.
Run it on a larger dataset for larger N (e.g. `sw-zoo synthetic --out /tmp/syn100k --num-train
100000` then `--data /tmp/syn100k`). Jittered copies of a small set are no substitute: each
vector then has dozens of near-duplicates, the hardest case for a graph index, which real
collections do not look like.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sw_zoo.curation import embedding_index  # noqa: E402


def measure_graph(vectors: np.ndarray, *, expansion_search: int, queries: int, k: int = 10) -> dict:
  graph = embedding_index._hnsw(vectors.shape[1], connectivity=16, expansion_add=128, expansion_search=expansion_search)
  t = time.perf_counter()
  graph.add(np.arange(len(vectors), dtype=np.uint64), vectors)
  build = time.perf_counter() - t
  result = embedding_index.measure(graph, vectors, queries=queries, k=k)
  result["build_s"] = build
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--out", default="/tmp/sw_zoo_image_search_index")
  p.add_argument("--queries", type=int, default=300)
  args = p.parse_args()
  subprocess.run([sys.executable, "-m", "sw_zoo.cli", "index", args.data, "--model", args.model, "--out", args.out,
                  "--no-progress"], check=True, cwd=REPO)
  index = embedding_index.SearchIndex(args.out)
  vectors = index.normalised
  print(f"\n{len(vectors)} images, {vectors.shape[1]}-d embeddings; recall@10 vs exact search, "
        f"{args.queries} queries (stored vectors, self excluded), single-query p50 latency")
  print(f"{'N':>8} {'ef':>4} {'recall@10':>10} {'HNSW ms':>8} {'exact ms':>9} {'speed-up':>9} {'build s':>8}")

  def report(vs: np.ndarray, ef: int) -> None:
    r = measure_graph(vs, expansion_search=ef, queries=args.queries)
    print(f"{len(vs):>8} {ef:>4} {r['recall_at_10']:>10.4f} {r['hnsw_latency_ms_p50']:>8.3f} "
          f"{r['exact_latency_ms_p50']:>9.3f} {r['exact_latency_ms_p50'] / r['hnsw_latency_ms_p50']:>8.1f}x "
          f"{r['build_s']:>8.1f}", flush=True)

  for ef in (16, 32, 64, 128):
    report(vectors, ef)


if __name__ == "__main__":
  main()
