"""Bundles from training runs: `write_run_bundle` at the end of `train_and_evaluate`, and
`export` for `sw-zoo export` (a workdir, one checkpoint step, or a bundle -> a bundle).

A run's model, image size and threshold come from its `config.json`; its weights from the
checkpoint (the EMA when the run kept one, unless use_ema=False); its tag names from the run's
bundle, else the dataset's selected_tags.csv (or `tags_path`). `onnx=True` adds `model.onnx` in
the WD-tagger layout (`onnx_export`): the bundle directory then works as-is in WD-tagger tools.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from sw_zoo import run_dir, storage
from sw_zoo.data.atomic_file import check_output_dir
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.inference import model_source
from sw_zoo.models.spec import spec_from_run_config


def write_run_bundle(workdir: str, params: Any, config: Any, tags: vocab_lib.TagVocab, *, step: int) -> str | None:
  """Writes `<workdir>/bundle` from a finished run's eval params; returns its path on process 0.

  Collective: every process calls it (the params may be sharded across hosts and are gathered
  first); process 0 writes. A gs:// workdir gets its bundle uploaded with config.json last
  (`bundle.write_bundle`), so readers never see half a bundle.
  """
  import jax
  from jax.experimental import multihost_utils

  host = multihost_utils.process_allgather(params, tiled=True) if jax.process_count() > 1 else jax.device_get(params)
  if jax.process_index() != 0:
    return None
  return bundle_lib.write_bundle(
      run_dir.bundle_dir(workdir), params=host, spec=spec_from_run_config(config, len(tags)),
      image_size=int(config["data"]["image_size"]), tags=tags,
      thresholds=bundle_lib.threshold_config(float(config["eval"]["threshold"])),
      source={"workdir": run_dir.absolute(workdir), "step": int(step), "weights": run_dir.weights_kind(config)})


@dataclasses.dataclass
class Exported:
  path: str
  spec: Any
  num_tags: int
  image_size: int
  onnx: bool


class NothingToDo(ValueError):
  """The source is already the bundle asked for."""


def export(source_path: str, out: str | None = None, *, onnx: bool = False, use_ema: bool = True,
           tags_path: str | None = None, threshold: float | None = None, force: bool = False) -> Exported:
  """Writes the bundle of `source_path` (see the module docstring) to `out` (default: a run's
  `<workdir>/bundle`, or the bundle itself when adding model.onnx or a threshold)."""
  source = model_source.load(source_path, use_ema=use_ema)
  if source.kind == "bundle":
    out = run_dir.absolute(out) if out else source.home
    if out == source.home and not onnx and threshold is None:
      raise NothingToDo("nothing to do (the source is already a bundle; add --onnx or --out)")
    thresholds = source.thresholds
  else:
    out = run_dir.absolute(out) if out else storage.join(source.home, run_dir.BUNDLE_DIR)
    existing = source.same_weights(out)  # thresholds `sw-zoo eval` tuned for these weights are kept
    thresholds = (existing or {}).get("thresholds") or source.thresholds
  if threshold is not None:
    thresholds = bundle_lib.threshold_config(threshold)
  # The source is never replaced: a run's workdir never, another bundle unless it is updated in place.
  protect = [] if source.kind == "bundle" and out == source.home else [source.root]
  check_output_dir(out, is_own=bundle_lib.is_bundle, what="a model bundle", force=force, protect=protect)
  tags = source.find_tags(tags_path)
  params = source.nested_params()
  extra = {}
  if onnx:
    from sw_zoo.inference import onnx_export

    extra[bundle_lib.ONNX_FILE] = onnx_export.bundle_to_onnx_bytes(
        bundle_lib.Bundle(path=out, config={"image_size": source.image_size, "thresholds": thresholds},
                          spec=source.spec, params=params, tags=tags))
  written = bundle_lib.write_bundle(out, params=params, spec=source.spec, image_size=source.image_size, tags=tags,
                                    thresholds=thresholds, source=source.provenance, extra_files=extra, force=force,
                                    protect=protect)
  return Exported(written, source.spec, len(tags), source.image_size, onnx)
