"""A nearest-neighbour index over a tagger's pooled embeddings, searchable by image or by tag.

Directory layout (written whole through a temp directory, so a failed build never replaces a
good index):

    index.json        format, model bundle path + params sha256, dim, count, HNSW settings,
                      and the recall@10 / latency measured when it was built
    items.jsonl       one line per indexed image, in key order: {"key", "path"} or {"key", "id", "source"}
    embeddings.npy    float32 [N, D] pooled features (the head's input), memory-mapped on load
    index.usearch     usearch HNSW graph over the L2-normalised embeddings, cosine metric

Image queries embed the query with the same model and search the HNSW graph (approximate) or
all embeddings (`exact=True`, one matrix-vector product). Tag queries are exact: the model's
head turns each stored embedding back into tag probabilities (logit = embedding . w_tag + b_tag),
and images are ranked by the summed log-probability of the wanted tags (and of the absence of
`-tag`s), i.e. by the model's joint confidence, as the tagger itself would score them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from sw_zoo import storage
from sw_zoo.data.atomic_file import check_output_dir, replace_dir

INDEX_FORMAT = 1
RECALL_K = 10


def normalise(vectors: np.ndarray) -> np.ndarray:
  vectors = np.asarray(vectors, np.float32)
  return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _hnsw(dim: int, *, connectivity: int, expansion_add: int, expansion_search: int):
  from usearch.index import Index  # the curate extra

  return Index(ndim=dim, metric="cos", dtype="f32", connectivity=connectivity, expansion_add=expansion_add,
               expansion_search=expansion_search)


def exact_top_k(normalised: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Brute-force cosine top-k: (keys [Q, k], similarities [Q, k]), best first."""
  sims = normalise(queries) @ normalised.T
  k = min(k, sims.shape[1])
  part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
  part_sims = np.take_along_axis(sims, part, 1)
  order = np.argsort(-part_sims, axis=1, kind="stable")
  return np.take_along_axis(part, order, 1), np.take_along_axis(part_sims, order, 1)


def measure(graph: Any, normalised: np.ndarray, *, queries: int = 200, k: int = RECALL_K, seed: int = 0) -> dict[str, Any]:
  """recall@k of the HNSW graph against exact search, and single-query latency of both.

  Queries are stored vectors; each query's own key is left out of both result lists, so a hit
  on itself does not count."""
  n = len(normalised)
  if n < 2:
    return {"queries": 0}
  picks = np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)
  kk = min(k, n - 1)
  hits, ann_s, exact_s = 0, [], []
  for q in picks:
    vec = normalised[q:q + 1]
    t = time.perf_counter()
    exact_keys, _ = exact_top_k(normalised, vec, kk + 1)
    exact_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    found = graph.search(vec[0], kk + 1)
    ann_s.append(time.perf_counter() - t)
    truth = [int(x) for x in exact_keys[0] if x != q][:kk]
    got = [int(x) for x in np.asarray(found.keys) if x != q][:kk]
    hits += len(set(truth) & set(got))
  return {"queries": int(len(picks)), "k": int(kk), f"recall_at_{k}": hits / (kk * len(picks)),
          "hnsw_latency_ms_p50": 1e3 * float(np.median(ann_s)), "exact_latency_ms_p50": 1e3 * float(np.median(exact_s))}


def is_index(path: str) -> bool:
  """Whether `path` holds a search index (its index.json)."""
  return os.path.isfile(os.path.join(path, "index.json"))


def build(tagger: Any, items: Iterable[tuple[dict[str, Any], Any]], out_dir: str, *, model: str,
          connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 64,
          progress: Callable[[int], None] | None = None,
          on_error: Callable[[dict[str, Any], Exception], None] | None = None, force: bool = False,
          protect: Sequence[str] = ()) -> dict[str, Any]:
  """Embeds `items` ((description, image source) pairs) with `tagger` and writes the index.

  Unreadable images are passed to `on_error` and left out. Returns index.json's contents. `out_dir`
  follows `atomic_file.check_output_dir` (an existing index is replaced; `protect`: the inputs)."""
  output = dict(is_own=is_index, what="a search index", force=force, protect=protect)
  check_output_dir(out_dir, **output)  # before the (long) embedding pass
  descriptions: list[dict[str, Any]] = []
  vectors: list[np.ndarray] = []
  for description, _, pooled, error in tagger.iter_keyed(items, skip_errors=True):
    if error is not None:
      if on_error:
        on_error(description, error)
    else:
      descriptions.append({"key": len(descriptions), **description})
      vectors.append(pooled)
    if progress:
      progress(1)
  if not vectors:
    raise ValueError("no image could be embedded; nothing to index")
  embeddings = np.stack(vectors).astype(np.float32)
  normalised = normalise(embeddings)
  graph = _hnsw(embeddings.shape[1], connectivity=connectivity, expansion_add=expansion_add,
                expansion_search=expansion_search)
  t = time.perf_counter()
  graph.add(np.arange(len(normalised), dtype=np.uint64), normalised)
  add_s = time.perf_counter() - t
  meta = {
      "format": INDEX_FORMAT, "model": model, "params_sha256": (tagger.bundle.config.get("params") or {}).get("sha256"),
      "image_size": tagger.image_size, "dim": int(embeddings.shape[1]), "count": len(descriptions),
      "metric": "cos", "hnsw": {"connectivity": connectivity, "expansion_add": expansion_add,
                                "expansion_search": expansion_search, "build_seconds": round(add_s, 3)},
      "check": measure(graph, normalised),
  }

  def fill(tmp: str) -> None:
    np.save(os.path.join(tmp, "embeddings.npy"), embeddings)
    graph.save(os.path.join(tmp, "index.usearch"))
    with open(os.path.join(tmp, "items.jsonl"), "w", encoding="utf-8") as f:
      for d in descriptions:
        f.write(json.dumps(d) + "\n")
    with open(os.path.join(tmp, "index.json"), "w", encoding="utf-8") as f:
      f.write(json.dumps(meta, indent=1) + "\n")

  replace_dir(out_dir, fill, **output)
  return meta


@dataclasses.dataclass
class Hit:
  key: int
  score: float  # cosine similarity (image queries) or summed log-probability (tag queries)
  item: dict[str, Any]


class SearchIndex:
  """A built index, opened for queries."""

  def __init__(self, path: str):
    # A gs:// index is read from its verified local mirror (embeddings are memory-mapped).
    self.path = storage.pull(path) if storage.is_remote(path) else os.path.abspath(path)
    meta_path = os.path.join(self.path, "index.json")
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"{self.path}: not a search index (no index.json; build one with `sw-zoo index`)")
    with open(meta_path, encoding="utf-8") as f:
      self.meta = json.load(f)
    if self.meta.get("format") != INDEX_FORMAT:
      raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, this sw_zoo reads {INDEX_FORMAT}")
    self.embeddings = np.load(os.path.join(self.path, "embeddings.npy"), mmap_mode="r")
    with open(os.path.join(self.path, "items.jsonl"), encoding="utf-8") as f:
      self.items = [json.loads(line) for line in f]
    if self.embeddings.shape != (len(self.items), self.meta["dim"]):
      raise ValueError(f"{self.path}: embeddings.npy is {self.embeddings.shape}, expected "
                       f"({len(self.items)}, {self.meta['dim']}) from items.jsonl and index.json")
    self._normalised: np.ndarray | None = None
    self._graph = None

  def __len__(self) -> int:
    return len(self.items)

  @property
  def normalised(self) -> np.ndarray:
    if self._normalised is None:
      self._normalised = normalise(self.embeddings)
    return self._normalised

  @property
  def graph(self):
    if self._graph is None:
      from usearch.index import Index

      self._graph = Index.restore(os.path.join(self.path, "index.usearch"))
      if self._graph is None or len(self._graph) != len(self.items):
        raise ValueError(f"{self.path}/index.usearch does not hold the {len(self.items)} indexed vectors")
    return self._graph

  def _hits(self, keys: np.ndarray, scores: np.ndarray) -> list[Hit]:
    return [Hit(int(k), float(s), self.items[int(k)]) for k, s in zip(keys, scores)]

  def by_vector(self, query: np.ndarray, k: int = 10, *, exact: bool = False) -> list[Hit]:
    """Nearest indexed images to one embedding (cosine similarity, best first)."""
    query = np.asarray(query, np.float32).reshape(1, -1)
    if query.shape[1] != self.meta["dim"]:
      raise ValueError(f"query has {query.shape[1]} features, the index {self.meta['dim']}")
    if exact:
      keys, sims = exact_top_k(self.normalised, query, k)
      return self._hits(keys[0], sims[0])
    found = self.graph.search(normalise(query)[0], min(k, len(self)))
    return self._hits(np.asarray(found.keys), 1.0 - np.asarray(found.distances))

  def by_tags(self, head_kernel: np.ndarray, head_bias: np.ndarray, wanted: list[int], unwanted: list[int],
              k: int = 10) -> list[Hit]:
    """Images ranked by the model's log-probability of having every `wanted` tag column and none
    of the `unwanted` ones (exact, over every indexed image)."""
    cols = list(wanted) + list(unwanted)
    if not cols:
      raise ValueError("no tags to search for")
    logits = np.asarray(self.embeddings, np.float32) @ np.asarray(head_kernel, np.float32)[:, cols] \
        + np.asarray(head_bias, np.float32)[cols]
    sign = np.array([1.0] * len(wanted) + [-1.0] * len(unwanted), np.float32)
    # log sigmoid(+-z), computed stably.
    score = -np.logaddexp(0.0, -sign * logits).sum(1)
    k = min(k, len(score))
    top = np.argpartition(-score, k - 1)[:k]
    top = top[np.argsort(-score[top], kind="stable")]
    return self._hits(top, score[top])


def check_same_model(bundle_config: dict, meta: dict, model_path: str) -> None:
  """An index is searched with the weights it was built with (params sha256 in its meta)."""
  have = (bundle_config.get("params") or {}).get("sha256")
  if meta.get("params_sha256") and have and have != meta["params_sha256"]:
    raise ValueError(f"{model_path} holds other weights than the index was built with "
                     f"(params sha256 {have[:12]}... vs {meta['params_sha256'][:12]}...); rebuild the index")


def parse_tag_query(text: str, names: list[str]) -> tuple[list[int], list[int]]:
  """'1girl solo -hat' -> (label indices wanted, indices that must be absent). Underscores may be
  written as spaces; unknown tags are an error naming them."""
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
