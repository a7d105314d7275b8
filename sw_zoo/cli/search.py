"""`sw-zoo search INDEX`: find images by similarity or by tag in an index made by `sw-zoo index`.

    sw-zoo search runs/mine_index --image query.jpg --k 20                   # nearest images (HNSW)
    sw-zoo search runs/mine_index --image query.jpg --exact                  # brute force
    sw-zoo search runs/mine_index --tags "circle red_object -striped_background"

Tag searches rank every image by the model's probability of the tags (`-tag`: of its absence),
using the bundle the index was built with.
"""
from __future__ import annotations

from sw_zoo.cli import common

import json
import math
import sys

from sw_zoo.curation import embedding_index


def main(argv: list[str] | None = None) -> int:
  parser = common.parser("sw-zoo search", __doc__)
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
  from sw_zoo.inference import bundle as bundle_lib

  try:
    index = embedding_index.SearchIndex(args.index)
    model_path = args.model or index.meta["model"]
    if args.image:
      from sw_zoo.inference.pretrained import load_pretrained

      tagger = load_pretrained(model_path, batch_size=1)
      embedding_index.check_same_model(tagger.bundle.config, index.meta, model_path)
      hits = index.by_vector(tagger.embed(args.image), args.k, exact=args.exact)
    else:
      from sw_zoo.inference.pretrained import resolve

      loaded = bundle_lib.read_bundle(resolve(model_path))
      embedding_index.check_same_model(loaded.config, index.meta, model_path)
      wanted, unwanted = embedding_index.parse_tag_query(args.tags, loaded.tags.names)
      head = loaded.params["head"]
      hits = index.by_tags(head["kernel"], head["bias"], wanted, unwanted, args.k)
  except ImportError as e:
    print(f"sw-zoo search: {e}. Search needs the curate extra: pip install -e '.[curate]'", file=sys.stderr)
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
