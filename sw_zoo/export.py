"""Bundles from training runs: written at the end of `train_and_evaluate`, and by `sw-zoo export`.

    sw-zoo export runs/demo                      # latest checkpoint -> runs/demo/bundle
    sw-zoo export runs/demo/checkpoints/600 --out exports/demo-600 --onnx
    sw-zoo export runs/demo/bundle --onnx        # add model.onnx to an existing bundle

A run's model, image size and threshold come from the `config.json` the trainer writes into its
workdir; its weights from the checkpoint (the EMA when the run kept one, unless --no-ema); its
tag names from the run's bundle, else the dataset's selected_tags.csv (or --tags).
`--onnx` adds `model.onnx` in the WD-tagger layout (sw_zoo/onnx_export.py): the bundle directory
then works as-is in WD-tagger tools.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from sw_zoo import bundle as bundle_lib
from sw_zoo.data import vocab as vocab_lib

BUNDLE_DIRNAME = "bundle"  # <workdir>/bundle: where a finished run puts its bundle


def spec_from_run_config(config: Mapping[str, Any], num_tags: int) -> bundle_lib.ModelSpec:
  """The ModelSpec of the model `train_and_evaluate` builds from `config` (a ConfigDict or its
  JSON): the same create_model arguments, attn 'none' included."""
  model = config["model"]
  attn = model["attn"]
  return bundle_lib.ModelSpec(name=model["name"], num_tags=int(num_tags), act=model["act"],
                              attn=None if attn == "none" else attn, dtype=str(model["dtype"]))


def _weights_kind(config: Mapping[str, Any]) -> str:
  return "ema" if float(config["optim"]["ema_decay"] or 0) > 0 else "params"


def write_run_bundle(workdir: str, params: Any, config: Any, tags: vocab_lib.TagVocab, *, step: int) -> str | None:
  """Writes `<workdir>/bundle` from a finished run's eval params; returns its path on process 0.

  Collective: every process calls it (the params may be sharded across hosts and are gathered
  first); process 0 writes. Workdirs on object stores (gs://...) are skipped, as renames there
  are not atomic: export from a local copy of the checkpoint instead.
  """
  import jax
  from jax.experimental import multihost_utils

  if "://" in workdir:
    return None
  if jax.process_count() > 1:
    host = multihost_utils.process_allgather(params, tiled=True)
  else:
    host = jax.device_get(params)
  if jax.process_index() != 0:
    return None
  return bundle_lib.write_bundle(
      os.path.join(workdir, BUNDLE_DIRNAME), params=host, spec=spec_from_run_config(config, len(tags)),
      image_size=int(config["data"]["image_size"]), tags=tags,
      thresholds=bundle_lib.threshold_config(float(config["eval"]["threshold"])),
      source={"workdir": os.path.abspath(workdir), "step": int(step), "weights": _weights_kind(config)})


# ---- From a checkpoint -----------------------------------------------------------------------


def _read_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _find_tags(workdir: str, run_config: Mapping[str, Any], tags_path: str | None, num_tags: int) -> vocab_lib.TagVocab:
  candidates = [tags_path] if tags_path else [
      os.path.join(workdir, BUNDLE_DIRNAME, bundle_lib.TAGS_FILE),
      os.path.join(os.path.expanduser(str(run_config["data"]["dir"])), "selected_tags.csv"),
  ]
  for path in candidates:
    if path and os.path.isfile(path):
      tags = vocab_lib.read_selected_tags(path)
      if len(tags) != num_tags:
        raise ValueError(f"{path}: {len(tags)} tags, but the checkpoint's head has {num_tags} outputs; "
                         "pass the run's selected_tags.csv with --tags")
      return tags
  raise FileNotFoundError(f"no selected_tags.csv for this run (looked at {', '.join(p for p in candidates if p)}); "
                          "pass the dataset's selected_tags.csv with --tags")


def bundle_fields_from_checkpoint(path: str, *, use_ema: bool = True, tags_path: str | None = None) -> dict[str, Any]:
  """write_bundle arguments for a run's workdir, checkpoints/ or checkpoints/<step>."""
  from sw_zoo.train import warm_start  # Orbax only for this kind of source

  step_dir = warm_start.resolve_step_dir(path)
  checkpoints = os.path.dirname(step_dir)
  workdir = os.path.dirname(checkpoints) if os.path.basename(checkpoints) == "checkpoints" else checkpoints
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path}: missing; the trainer writes the run's config there and export "
                            "rebuilds the model from it")
  run_config = _read_json(config_path)
  flat, described = warm_start.read_params(step_dir, use_ema=use_ema)
  heads = [a.shape[-1] for k, a in flat.items() if k[0] == "head" and k[-1] == "kernel"]
  if len(heads) != 1:
    raise ValueError(f"{described}: expected one head kernel, found {len(heads)}")
  from flax import traverse_util

  return {
      "params": traverse_util.unflatten_dict(flat),
      "spec": spec_from_run_config(run_config, heads[0]),
      "image_size": int(run_config["data"]["image_size"]),
      "tags": _find_tags(workdir, run_config, tags_path, heads[0]),
      "thresholds": bundle_lib.threshold_config(float(run_config["eval"]["threshold"])),
      "source": {"workdir": workdir, "step": int(os.path.basename(step_dir)),
                 "weights": "ema" if described.startswith("ema_params") else "params"},
  }


def _same_weights(out_dir: str, source: Mapping[str, Any]) -> dict[str, Any] | None:
  """An existing bundle at `out_dir` made from the same checkpoint: its config (thresholds that
  `sw-zoo eval` tuned for these weights are kept)."""
  if not bundle_lib.is_bundle(out_dir):
    return None
  existing = _read_json(os.path.join(out_dir, bundle_lib.CONFIG_FILE))
  old = existing.get("source", {})
  same = all(old.get(k) == source.get(k) for k in ("workdir", "step", "weights"))
  return existing if same else None


# ---- CLI -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="sw-zoo export", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", help="a run's workdir (latest checkpoint), checkpoints/<step>, or a bundle")
  parser.add_argument("--out", default=None,
                      help="bundle directory to write (default: <workdir>/bundle for a run, the bundle itself)")
  parser.add_argument("--onnx", action="store_true", help="also write model.onnx (WD-tagger layout)")
  parser.add_argument("--no-ema", action="store_true", help="export the raw params even if the run kept an EMA")
  parser.add_argument("--tags", default=None, help="selected_tags.csv of the run's dataset (default: found)")
  parser.add_argument("--threshold", type=float, default=None,
                      help="threshold for every category (default: the run's config.eval.threshold)")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  source = os.path.abspath(os.path.expanduser(args.source))
  try:
    if bundle_lib.is_bundle(source):
      out = os.path.abspath(args.out) if args.out else source
      if out == source and not args.onnx and args.threshold is None:
        print("sw-zoo export: nothing to do (the source is already a bundle; add --onnx or --out)", file=sys.stderr)
        return 2
      loaded = bundle_lib.read_bundle(source)
      fields = {"params": loaded.params, "spec": loaded.spec, "image_size": loaded.image_size, "tags": loaded.tags,
                "thresholds": loaded.thresholds, "source": loaded.config.get("source")}
    else:
      fields = bundle_fields_from_checkpoint(source, use_ema=not args.no_ema, tags_path=args.tags)
      out = os.path.abspath(args.out) if args.out else os.path.join(fields["source"]["workdir"], BUNDLE_DIRNAME)
      existing = _same_weights(out, fields["source"])
      if existing and existing.get("thresholds"):
        fields["thresholds"] = existing["thresholds"]
    if args.threshold is not None:
      fields["thresholds"] = bundle_lib.threshold_config(args.threshold)
    extra = {}
    if args.onnx:
      from sw_zoo import onnx_export

      extra[bundle_lib.ONNX_FILE] = onnx_export.bundle_to_onnx_bytes(
          bundle_lib.Bundle(path=out, config={"image_size": fields["image_size"], "thresholds": fields["thresholds"]},
                            spec=fields["spec"], params=fields["params"], tags=fields["tags"]))
    written = bundle_lib.write_bundle(out, extra_files=extra, **fields)
  except ImportError as e:
    print(f"sw-zoo export: {e}. ONNX export needs the export extra: pip install -e '.[export]'", file=sys.stderr)
    return 1
  except (OSError, ValueError) as e:
    print(f"sw-zoo export: {e}", file=sys.stderr)
    return 1
  print(f"Wrote bundle {written} ({fields['spec'].name}, {len(fields['tags'])} tags, {fields['image_size']} px"
        + (", with model.onnx" if args.onnx else "") + ")")
  return 0
