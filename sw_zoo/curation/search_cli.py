"""`sw-zoo index` and `sw-zoo search`: find images by similarity or by tag with a trained tagger.

    sw-zoo index ~/images --model runs/l0 --out ~/images_index --recursive   # a folder of images
    sw-zoo index data/mine --split train --model runs/l0 --out runs/mine_index  # a shard set
    sw-zoo search runs/mine_index --image query.jpg --k 20                   # nearest images (HNSW)
    sw-zoo search runs/mine_index --image query.jpg --exact                  # brute force
    sw-zoo search runs/mine_index --tags "circle red_object -striped_background"

The index stores the model's pooled embeddings and a usearch HNSW graph (cosine). At build
time it measures itself: recall@10 of the graph against exact search and single-query
latency of both, printed and kept in index.json. Tag searches rank every image by the model's
probability of the tags (`-tag`: of its absence), using the bundle the index was built with.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from sw_zoo.curation import embedding_index, split_data


def _epilog() -> str:
  return __doc__.split("\n\n", 1)[1]


def _progress(total: int | None, desc: str, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


def index_main(argv: list[str] | None = None) -> int:
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
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  source = os.path.abspath(os.path.expanduser(args.source))
  if os.path.isfile(os.path.join(source, split_data.DATASET_INFO_FILENAME)):
    try:
      info = split_data.read_dataset_info(source)
      splits = [args.split] if args.split else list(info["splits"])
      for s in splits:
        if s not in info["splits"]:
          raise KeyError(f"{source}: no split {s!r}; it has {sorted(info['splits'])}")
    except (OSError, ValueError, KeyError) as e:
      print(f"sw-zoo index: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
      return 1
    total = sum(int(info["splits"][s]["num_examples"]) for s in splits)
    items = ((({"id": rid, "source": src, "split": s}), image)
             for s in splits for rid, src, image in split_data.record_images(source, s))
  elif os.path.isdir(source):
    from sw_zoo.tag_cli import find_images

    files = find_images(source, args.recursive)
    if not files:
      print(f"sw-zoo index: no images in {source}" + ("" if args.recursive else " (add --recursive)"), file=sys.stderr)
      return 1
    total = len(files)
    items = (({"path": path}, path) for path in files)
  else:
    print(f"sw-zoo index: {source}: no such directory", file=sys.stderr)
    return 1

  from sw_zoo.pretrained import load_pretrained  # jax only once there is work

  skipped = []
  try:
    tagger = load_pretrained(args.model, batch_size=args.batch_size)
    with _progress(total, "embedding", not args.no_progress) as bar:
      meta = embedding_index.build(
          tagger, items, args.out, model=tagger.bundle.path, connectivity=args.connectivity,
          expansion_add=args.expansion_add, expansion_search=args.expansion_search, progress=bar.update,
          on_error=lambda item, err: skipped.append((item, err)))
  except ImportError as e:
    print(f"sw-zoo index: {e}. The index needs the curate extra: pip install -e '.[curate]'", file=sys.stderr)
    return 1
  except (OSError, ValueError, RuntimeError) as e:
    print(f"sw-zoo index: {e}", file=sys.stderr)
    return 1
  for item, err in skipped:
    print(f"skipped {item.get('path') or item.get('source') or item.get('id')}: {err}", file=sys.stderr)
  check = meta["check"]
  print(f"Indexed {meta['count']} images ({meta['dim']}-d) into {os.path.abspath(args.out)}"
        + (f"; skipped {len(skipped)}" if skipped else ""))
  if check.get("queries"):
    print(f"recall@{check['k']} vs exact search: {check[f'recall_at_{embedding_index.RECALL_K}']:.4f} over "
          f"{check['queries']} queries; query latency p50: HNSW {check['hnsw_latency_ms_p50']:.3f} ms, "
          f"exact {check['exact_latency_ms_p50']:.3f} ms")
  return 0


def search_main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="sw-zoo search", description=__doc__.split("\n\n")[0], epilog=_epilog(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("index", help="an index directory made by `sw-zoo index`")
  query = parser.add_mutually_exclusive_group(required=True)
  query.add_argument("--image", help="query image file")
  query.add_argument("--tags", help="space- or comma-separated tags; prefix '-' for tags that must be absent")
  parser.add_argument("--k", type=int, default=10, help="results (10)")
  parser.add_argument("--exact", action="store_true", help="image query: brute-force search instead of HNSW")
  parser.add_argument("--model", default=None, help="override the model recorded in the index (same weights)")
  parser.add_argument("--json", action="store_true", help="print results as JSON lines")
  args = parser.parse_args(argv)
  if args.k < 1:
    print("sw-zoo search: --k must be positive", file=sys.stderr)
    return 2
  from sw_zoo import bundle as bundle_lib

  try:
    index = embedding_index.SearchIndex(args.index)
    model_path = args.model or index.meta["model"]
    if args.image:
      from sw_zoo.pretrained import load_pretrained

      tagger = load_pretrained(model_path, batch_size=1)
      _check_same_model(tagger.bundle.config, index.meta, model_path)
      hits = index.by_vector(tagger.embed(args.image), args.k, exact=args.exact)
    else:
      from sw_zoo.pretrained import resolve

      loaded = bundle_lib.read_bundle(resolve(model_path))
      _check_same_model(loaded.config, index.meta, model_path)
      wanted, unwanted = _parse_tags(args.tags, loaded.tags.names)
      head = loaded.params["head"]
      hits = index.by_tags(head["kernel"], head["bias"], wanted, unwanted, args.k)
  except ImportError as e:
    print(f"sw-zoo search: {e}. Search needs the curate extra: pip install -e '.[curate]'", file=sys.stderr)
    return 1
  except (OSError, ValueError) as e:
    print(f"sw-zoo search: {e}", file=sys.stderr)
    return 1
  # Image queries score by cosine similarity; tag queries by the summed log-probability, shown as
  # the joint probability in the table.
  label = "similarity" if args.image else "probability"
  if not args.json and hits:
    print(f"{'rank':>4}  {label:>11}  image")
  for rank, hit in enumerate(hits, 1):
    if args.json:
      print(json.dumps({"rank": rank, "score": round(hit.score, 6), **hit.item}))
    else:
      where = hit.item.get("path") or f"{hit.item.get('source') or ''} (id {hit.item.get('id')})"
      shown = hit.score if args.image else math.exp(hit.score)
      print(f"{rank:4d}  {shown:11.4f}  {where}")
  return 0


def _check_same_model(bundle_config: dict, meta: dict, model_path: str) -> None:
  have = (bundle_config.get("params") or {}).get("sha256")
  if meta.get("params_sha256") and have and have != meta["params_sha256"]:
    raise ValueError(f"{model_path} holds other weights than the index was built with "
                     f"(params sha256 {have[:12]}... vs {meta['params_sha256'][:12]}...); rebuild the index")


def _parse_tags(text: str, names: list[str]) -> tuple[list[int], list[int]]:
  column = {name: i for i, name in enumerate(names)}
  wanted, unwanted, unknown = [], [], []
  for token in text.replace(",", " ").split():
    negative = token.startswith("-") and len(token) > 1 and token not in column
    name = token[1:] if negative else token
    if name not in column:
      alt = name.replace(" ", "_")
      if alt not in column:
        unknown.append(token)
        continue
      name = alt
    (unwanted if negative else wanted).append(column[name])
  if unknown:
    raise ValueError(f"unknown tags {unknown}; the model knows {len(names)} tags (see its selected_tags.csv)")
  if not wanted and not unwanted:
    raise ValueError("--tags: no tags given")
  return wanted, unwanted
