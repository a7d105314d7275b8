"""A trained model wherever it lives: a run's workdir, one checkpoint step, or a bundle,
resolved to its `ModelSpec`, params (host arrays), image size, tags and the run's settings.

Accepted paths:
  * a run's workdir (latest checkpoint), its `checkpoints/` directory, or `checkpoints/<step>`:
    the model comes from the run's `config.json`, params from the Orbax `state` item (the EMA
    when the run kept one and `use_ema`);
  * a model bundle directory, read and verified by `bundle.read_bundle`;
  * `hf-hub:owner/repo[@revision]`, a bundle on the Hugging Face Hub (fetched into the cache
    by `hub.fetch`; a timm checkpoint repo there is only for warm starts, `train.warm_start`).
`sw-zoo eval`, `sw-zoo export` and warm starts (`config.init.checkpoint`) all resolve through
`load`, so they agree on what a path means.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from sw_zoo import run_dir, storage
from sw_zoo.data import dataset_info
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.inference import hub
from sw_zoo.models.spec import ModelSpec, spec_from_run_config

EXPECTED = "a run's workdir, its checkpoints/ directory, checkpoints/<step>, or a model bundle"


@dataclasses.dataclass
class ModelSource:
  kind: str  # "checkpoint" | "bundle"
  root: str  # the workdir or the bundle directory: where default outputs go
  described: str  # what was read, for logs
  spec: ModelSpec
  image_size: int
  params: dict[tuple[str, ...], np.ndarray]  # flat {param path: array}
  thresholds: dict[str, Any]  # a bundle's `thresholds` entry (for a run: its config.eval.threshold)
  settings: dict[str, Any]  # the run's defaults: data_dir, threshold, batch_size, num_threads, prefetch
  provenance: dict[str, Any]  # a bundle's `source` entry: workdir, step, weights
  tags: vocab_lib.TagVocab | None = None  # a bundle's own vocabulary (the model's outputs)
  step: int | None = None
  step_given: bool = False  # the path named one checkpoint step (not "the latest")
  train_summary: dict[str, Any] | None = None  # the run's own eval_summary.json
  origin: str | None = None  # the gs:// URL `root` mirrors (outputs that default to `root` go there)

  @property
  def home(self) -> str:
    """Where outputs that default to the source's own directory go: the URL for a remote source."""
    return self.origin or self.root

  def nested_params(self) -> dict[str, Any]:
    from flax import traverse_util

    return traverse_util.unflatten_dict(self.params)

  def run_bundle(self) -> str | None:
    """`<workdir>/bundle` when it holds exactly these weights (its `source` says so): the bundle
    whose thresholds `sw-zoo eval` may update and `sw-zoo export` keeps."""
    if self.kind != "checkpoint":
      return None
    directory = run_dir.bundle_dir(self.root)
    return directory if self.same_weights(directory) else None

  def same_weights(self, directory: str) -> dict[str, Any] | None:
    """The config.json of the bundle at `directory` if it was made from exactly these weights."""
    if not bundle_lib.is_bundle(directory):
      return None
    config = run_dir.read_json(os.path.join(directory, bundle_lib.CONFIG_FILE))
    made_from = config.get("source") or {}
    same = all(made_from.get(k) == self.provenance.get(k) for k in ("workdir", "step", "weights"))
    return config if same else None

  def find_tags(self, tags_path: str | None = None) -> vocab_lib.TagVocab:
    """The model's tag names: `tags_path`, else a bundle's own, else the run's bundle's, else the
    run's dataset's selected_tags.csv; the count must match the head."""
    if tags_path is None and self.tags is not None:
      return self.tags
    candidates = [tags_path] if tags_path else [
        os.path.join(run_dir.bundle_dir(self.root), bundle_lib.TAGS_FILE),
        *([os.path.join(run_dir.absolute(str(self.settings["data_dir"])), dataset_info.SELECTED_TAGS_FILENAME)]
          if self.settings.get("data_dir") else []),
    ]
    for path in candidates:
      if os.path.isfile(path):
        tags = vocab_lib.read_selected_tags(path)
        if len(tags) != self.spec.num_tags:
          raise ValueError(f"{path}: {len(tags)} tags, but {self.described} has {self.spec.num_tags} outputs; "
                           "pass the run's selected_tags.csv with --tags")
        return tags
    raise FileNotFoundError(f"no selected_tags.csv for {self.root} (looked at {', '.join(candidates)}); "
                            "pass the dataset's selected_tags.csv with --tags")


def head_outputs(params: dict[tuple[str, ...], np.ndarray], described: str) -> int:
  heads = [v.shape[-1] for k, v in params.items() if k[0] == "head" and k[-1] == "kernel"]
  if len(heads) != 1:
    raise ValueError(f"{described}: expected one head/.../kernel param, found {len(heads)}")
  return int(heads[0])


def load(path: str, *, use_ema: bool = True) -> ModelSource:
  """Resolves `path` (see the module docstring); errors name the path and what was expected."""
  if hub.is_hub_name(path):
    return _load_bundle(hub.fetch_bundle(path))
  path = run_dir.absolute(path)
  if storage.is_remote(path):
    return _load_remote(path.rstrip("/"), use_ema=use_ema)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such directory (expected {EXPECTED})")
  if bundle_lib.is_bundle(path):
    return _load_bundle(path)
  return _load_checkpoint(path, use_ema=use_ema)


def _load_remote(url: str, *, use_ema: bool) -> ModelSource:
  """A gs:// bundle or run, read from its local mirror; `origin` keeps the URL for outputs."""
  storage.check_bucket(url)
  if bundle_lib.is_bundle(url):
    source = _load_bundle(storage.pull(url, exact=True))
  else:
    if not storage.isdir(url):
      raise FileNotFoundError(f"{url}: not found (expected {EXPECTED})")
    try:
      step_dir = run_dir.localize_run(url)
    except run_dir.RunError:
      raise run_dir.RunError(f"{url}: no finished checkpoint and no bundle there (expected {EXPECTED})") from None
    source = _load_checkpoint(step_dir, use_ema=use_ema)
    source.step_given = storage.url_of(step_dir) == url  # the URL named this step, not "the latest"
    source.provenance["workdir"] = storage.url_of(source.root) or source.root
  source.origin = storage.url_of(source.root)
  return source


def _load_bundle(path: str) -> ModelSource:
  from flax import traverse_util

  loaded = bundle_lib.read_bundle(path)
  default = loaded.thresholds.get("default")
  return ModelSource(
      kind="bundle", root=loaded.path, described=f"params of bundle {loaded.path}", spec=loaded.spec,
      image_size=loaded.image_size,
      params={tuple(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(loaded.params).items()},
      thresholds=dict(loaded.thresholds),
      settings={"threshold": float(default) if isinstance(default, (int, float)) else None},
      provenance=dict(loaded.config.get("source") or {}), tags=loaded.tags)


def _load_checkpoint(path: str, *, use_ema: bool) -> ModelSource:
  try:
    step_dir = run_dir.resolve_step_dir(path)
  except run_dir.RunError:
    raise run_dir.RunError(f"{path}: no finished checkpoint and no bundle there (expected {EXPECTED})") from None
  workdir = run_dir.workdir_of(step_dir)
  config = run_dir.read_config(workdir)
  where = os.path.join(workdir, run_dir.CONFIG_FILE)
  params, weights = run_dir.read_params(step_dir, use_ema=use_ema)
  described = run_dir.describe(step_dir, weights)
  spec = spec_from_run_config(config, head_outputs(params, described))
  get = lambda key, default=None: run_dir.lookup(config, key, where, default)
  threshold = get("eval.threshold")
  step = int(os.path.basename(step_dir))
  return ModelSource(
      kind="checkpoint", root=workdir, described=described, spec=spec,
      image_size=int(run_dir.lookup(config, "data.image_size", where)), params=params,
      thresholds=bundle_lib.threshold_config(float(threshold)) if threshold is not None else {},
      settings={"data_dir": get("data.dir"), "threshold": threshold,
                "batch_size": int(get("eval.batch_size", 0) or 0) or get("batch_size"),
                "num_threads": get("data.num_threads"), "prefetch": get("data.prefetch")},
      provenance={"workdir": workdir, "step": step, "weights": weights},
      step=step, step_given=path == step_dir, train_summary=run_dir.read_eval_summary(workdir))
