"""`sw-zoo index SOURCE --model M --out INDEX`: embed images into a search index.

    sw-zoo index ~/images --model runs/l0 --out ~/images_index --recursive   # a folder of images
    sw-zoo index data/mine --split train --model runs/l0 --out runs/mine_index  # a shard set

The index stores the model's pooled embeddings and a usearch HNSW graph (cosine). At build
time it measures itself: recall@10 of the graph against exact search and single-query
latency of both, printed and kept in index.json. Query it with `sw-zoo search`.
"""
from __future__ import annotations

import argparse
import os
import sys

from sw_zoo import progress, run_dir, storage
from sw_zoo.curation import embedding_index, split_labels
from sw_zoo.data import dataset_info
from sw_zoo.data.atomic_file import check_output_dir
from sw_zoo.data.image_files import iter_images


def _epilog() -> str:
  return __doc__.split("\n\n", 1)[1]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="sw-zoo index", description=__doc__.split("\n\n")[0], epilog=_epilog(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", help="a folder of images, or a dataset directory (dataset.json + shards)")
  parser.add_argument("--model", required=True, help="a bundle, a run's workdir, or a registered name")
  parser.add_argument("--out", required=True, help="index directory to write (replaced whole when done)")
  parser.add_argument("--split", default=None, help="dataset split to index (default: every split)")
  parser.add_argument("--recursive", action="store_true", help="include sub-folders of an image folder")
  parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
  parser.add_argument("--connectivity", type=int, default=16, help="HNSW edges per node (16)")
  parser.add_argument("--expansion-add", type=int, default=128, help="HNSW candidate list while building (128)")
  parser.add_argument("--expansion-search", type=int, default=64, help="HNSW candidate list while searching (64)")
  parser.add_argument("--force", action="store_true",
                      help="replace --out even if it holds something else (never its own inputs)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  source = run_dir.absolute(args.source)
  if storage.isfile(storage.join(source, dataset_info.DATASET_INFO_FILENAME)):  # local or gs://
    info = dataset_info.read_dataset_info(source)
    splits = [args.split] if args.split else list(info["splits"])
    for s in splits:
      if s not in info["splits"]:
        raise KeyError(f"{source}: no split {s!r}; it has {sorted(info['splits'])}")
    total = sum(int(info["splits"][s]["num_examples"]) for s in splits)
    items = ((({"id": rid, "source": src, "split": s}), image)
             for s in splits for rid, src, image in split_labels.record_images(source, s))
  elif os.path.isdir(source):
    files = list(iter_images(source, recursive=args.recursive))
    if not files:
      raise FileNotFoundError(f"no images in {source}" + ("" if args.recursive else " (add --recursive)"))
    total = len(files)
    items = (({"path": path}, path) for path in files)
  else:
    raise FileNotFoundError(f"{source}: no such directory")
  check_output_dir(args.out, is_own=embedding_index.is_index, what="a search index", force=args.force,
                   protect=[source])
  with storage.output_dir(args.out, owned=lambda rel: True) as local_out:  # gs://: uploaded when built
    return _build(args, source, items, total, local_out)


def _build(args: argparse.Namespace, source: str, items, total: int, out: str) -> int:
  from sw_zoo.inference.pretrained import load_pretrained  # jax only once there is work

  skipped = []
  try:
    tagger = load_pretrained(args.model, batch_size=args.batch_size)
    with progress.bar(total, "embedding", unit="img", enabled=not args.no_progress) as bar:
      meta = embedding_index.build(
          tagger, items, out, model=storage.url_of(tagger.bundle.path) or tagger.bundle.path, connectivity=args.connectivity,
          expansion_add=args.expansion_add, expansion_search=args.expansion_search, progress=bar.update,
          on_error=lambda item, err: skipped.append((item, err)), force=args.force, protect=[source])
  except ImportError as e:
    print(f"sw-zoo index: {e}. The index needs the curate extra: pip install -e '.[curate]'", file=sys.stderr)
    return 1
  for item, err in skipped:
    print(f"skipped {item.get('path') or item.get('source') or item.get('id')}: {err}", file=sys.stderr)
  check = meta["check"]
  print(f"Indexed {meta['count']} images ({meta['dim']}-d) into {run_dir.absolute(args.out)}"
        + (f"; skipped {len(skipped)}" if skipped else ""))
  if check.get("queries"):
    print(f"recall@{check['k']} vs exact search: {check[f'recall_at_{embedding_index.RECALL_K}']:.4f} over "
          f"{check['queries']} queries; query latency p50: HNSW {check['hnsw_latency_ms_p50']:.3f} ms, "
          f"exact {check['exact_latency_ms_p50']:.3f} ms")
  return 0
