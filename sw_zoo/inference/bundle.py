"""Model bundles: a trained tagger as a directory anyone can load without pickle or the trainer.

    <bundle>/
      config.json          what the model is and how to feed it (schema below)
      params.msgpack       the params tree (flax msgpack: arrays as raw bytes + dtype + shape)
      selected_tags.csv    the model's outputs, WD-tagger layout (row i = output i)
      model.onnx           optional (`sw-zoo export --onnx`): WD-tagger compatible ONNX model

config.json (format_version 1):

    {"format": "sw_zoo.bundle", "format_version": 1,
     "model": {"name": "l2_silu_eca", "act": "silu", "attn": "eca", "dtype": "bfloat16",
               "num_tags": 9083, "overrides": {}},
     "image_size": 448,
     "preprocessing": {...},     # descriptive: what `preprocess_eval` does, see PREPROCESSING
     "thresholds": {"method": "config", "default": 0.35,
                    "by_category": {"general": 0.35, "character": 0.35}},
     "tags": {"file": "selected_tags.csv", "count": 9083, "by_category": {"rating": 4, ...},
              "layout": {...}},   # optional, see below
     "params": {"file": "params.msgpack", "format": "flax_msgpack", "sha256": "...",
                "bytes": 123, "count": 56720000,
                "tensors": {"stem/conv1/kernel": {"shape": [3, 3, 3, 16], "dtype": "float32"}, ...}},
     "source": {...},           # provenance: run, step, EMA, time, sw_zoo version
     "onnx": {...}}             # optional: model.onnx's image size, precision and its check

`model.name/act/attn/overrides` are `create_model` arguments exactly as the trainer passed them
(attn null keeps the variant's own attention). `thresholds` is the shape `sw-zoo eval` writes
(it replaces the key with tuned ones; `method` says where they came from).

`tags.layout` (written by `sw-zoo export`, `tool_layouts.describe`) documents the row order for
other tools: `rows` maps each category name to its half-open [start, stop) row runs, `wd_order`
says whether the rows run rating -> general -> character, and `tools` says, per WD tool (space,
kohya, webui, comfyui), "fits" or what that tool would get wrong reading this selected_tags.csv
(`sw-zoo export --layout TOOL` writes an adapted copy). `onnx` (when model.onnx is written):
{"file", "image_size" (the graph's, which may differ from the bundle's), "precision",
"check": the agreement report against float32 for fp16 / int8 (`onnx_precision.compare`)}.

Loading checks everything before any array is used: the format and version, the params file's
sha256 (a damaged or truncated file), every tensor's shape and dtype against `params.tensors`,
and those against the params of the model that `model` builds, and the tag count against the
head. Each failure raises BundleError naming the file and what differs.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import serialization, traverse_util

from sw_zoo import storage
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.data.atomic_file import replace_dir, write_synced
from sw_zoo.data.preprocess import PAD_VALUE
from sw_zoo.evaluation.thresholds import DEFAULT_THRESHOLD
from sw_zoo.models.spec import ModelSpec, param_shapes

FORMAT = "sw_zoo.bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
TAGS_FILE = "selected_tags.csv"
ONNX_FILE = "model.onnx"

# What `sw_zoo.data.preprocess.preprocess_eval` does, for readers of config.json that do not run
# sw_zoo (other tools, people). The code is the definition; this only describes it.
PREPROCESSING = {
    "function": "sw_zoo.data.preprocess.preprocess_eval",
    "decode": "RGB; EXIF orientation applied; transparency composited onto white",
    "pad": "white_square",
    "pad_value": PAD_VALUE,
    "resize": "bicubic (OpenCV INTER_CUBIC), after INTER_AREA to 2x the size when shrinking more than 2x",
    "layout": "NHWC",
    "channels": "RGB",
    "dtype": "uint8",
    "range": "0-255",
    "normalisation": "inside the model: (x - mean * 255) / (std * 255), ImageNet mean/std",
}


class BundleError(ValueError):
  """A bundle directory is missing, damaged, or does not describe its own contents."""


def spec_from_json(data: Mapping[str, Any], where: str) -> ModelSpec:
  """A bundle's `model` entry -> ModelSpec, or BundleError naming the file."""
  if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
    raise BundleError(f"{where}: 'model' must be an object with a string 'name', got {data!r}")
  num_tags = data.get("num_tags")
  if not isinstance(num_tags, int) or num_tags < 1:
    raise BundleError(f"{where}: model.num_tags must be a positive integer, got {num_tags!r}")
  return ModelSpec(name=data["name"], num_tags=num_tags, act=data.get("act"), attn=data.get("attn"),
                   dtype=data.get("dtype") or "float32", overrides=dict(data.get("overrides") or {}))


def threshold_config(threshold: float, method: str = "config") -> dict[str, Any]:
  """The `thresholds` entry for one threshold used for every category (ratings are reported as
  scores, not thresholded)."""
  return {"method": method, "default": float(threshold),
          "by_category": {"general": float(threshold), "character": float(threshold)}}


@dataclasses.dataclass
class Bundle:
  """A loaded, verified bundle. `params` is the nested params tree of numpy arrays."""
  path: str
  config: dict[str, Any]
  spec: ModelSpec
  params: dict[str, Any]
  tags: vocab_lib.TagVocab

  @property
  def image_size(self) -> int:
    return int(self.config["image_size"])

  @property
  def thresholds(self) -> dict[str, Any]:
    return self.config.get("thresholds") or {}


# ---- Writing -------------------------------------------------------------------------------


def _flat(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}


def tensor_table(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  return {path: {"shape": list(a.shape), "dtype": a.dtype.name} for path, a in sorted(_flat(params).items())}


def write_bundle(out_dir: str | os.PathLike, *, params: Mapping[str, Any], spec: ModelSpec, image_size: int,
                 tags: vocab_lib.TagVocab, thresholds: Mapping[str, Any] | None = None,
                 source: Mapping[str, Any] | None = None, extra_files: Mapping[str, bytes] | None = None,
                 force: bool = False, protect: Sequence[str] = (), tags_layout: Mapping[str, Any] | None = None,
                 onnx: Mapping[str, Any] | None = None) -> str:
  """Writes a bundle directory atomically (see `replace_dir`); returns its absolute path.

  `params`: the nested params tree (host or device arrays). `thresholds`: the `thresholds`
  entry (default: `DEFAULT_THRESHOLD` everywhere, the WD-tagger convention). `extra_files`: more files to
  place in the bundle (e.g. model.onnx), written in the same atomic step. `tags_layout` / `onnx`:
  the config.json entries of those names (see the module docstring).
    `out_dir` must be absent, empty or a bundle (else `--force`), and must not contain `protect`
  (see `atomic_file.check_output_dir`); this is checked before anything is written.
  """
  host = jax_free_tree(params)
  flat = _flat(host)
  head = [a for path, a in flat.items() if path.startswith("head/") and path.endswith("kernel")]
  if len(tags) != spec.num_tags or (head and head[0].shape[-1] != spec.num_tags):
    raise BundleError(f"{len(tags)} tags, model.num_tags={spec.num_tags} and a head of "
                      f"{head[0].shape[-1] if head else '?'} outputs must agree")
  have = {p: (a.shape, a.dtype.name) for p, a in flat.items()}
  _raise_if(_compare(have, param_shapes(spec, image_size), "the params", f"model {spec.name!r}"),
            f"{out_dir}: not written, the params do not fit the model")
  blob = serialization.msgpack_serialize(host)
  per_category: dict[str, int] = {}
  for code in tags.categories:
    name = vocab_lib.category_name(code)
    per_category[name] = per_category.get(name, 0) + 1
  config = {
      "format": FORMAT,
      "format_version": FORMAT_VERSION,
      "model": spec.to_json(),
      "image_size": int(image_size),
      "preprocessing": PREPROCESSING,
      "thresholds": dict(thresholds) if thresholds else threshold_config(DEFAULT_THRESHOLD),
      "tags": {"file": TAGS_FILE, "count": len(tags), "by_category": per_category,
               **({"layout": dict(tags_layout)} if tags_layout else {})},
      "params": {"file": PARAMS_FILE, "format": "flax_msgpack", "sha256": hashlib.sha256(blob).hexdigest(),
                 "bytes": len(blob), "count": int(sum(a.size for a in flat.values())),
                 "tensors": tensor_table(host)},
      "source": {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "sw_zoo_version": _version(), **dict(source or {})},
  }
  if onnx:
    config["onnx"] = dict(onnx)

  def fill(tmp: str) -> None:
    write_synced(os.path.join(tmp, PARAMS_FILE), blob)
    vocab_lib.write_selected_tags(os.path.join(tmp, TAGS_FILE), tags)
    for name, data in (extra_files or {}).items():
      write_synced(os.path.join(tmp, name), data)
    write_synced(os.path.join(tmp, CONFIG_FILE), (json.dumps(config, indent=2) + "\n").encode())

  out_dir = os.fspath(out_dir)
  if not storage.is_remote(out_dir):
    return replace_dir(out_dir, fill, is_own=is_bundle, what="a model bundle", force=force, protect=protect)
  # gs://: built in the local mirror (made the bucket's state first, so the same ownership rule
  # holds), then uploaded with config.json last: without it the prefix is no bundle to readers.
  with storage.output_dir(out_dir, last=[CONFIG_FILE], owned=lambda rel: True) as local:
    replace_dir(local, fill, is_own=is_bundle, what="a model bundle", force=force,
                protect=[storage.mirror_path(p) for p in protect])
  return out_dir


def jax_free_tree(params: Mapping[str, Any]) -> dict[str, Any]:
  """A plain nested dict of numpy arrays (device arrays fetched, boxes and FrozenDicts dropped)."""
  flat = traverse_util.flatten_dict(dict(params))
  return traverse_util.unflatten_dict({k: np.asarray(getattr(v, "value", v)) for k, v in flat.items()})


def _version() -> str:
  from sw_zoo import __version__

  return __version__


# ---- Reading -------------------------------------------------------------------------------


def is_bundle(path: str | os.PathLike) -> bool:
  """Whether `path` is a directory whose config.json declares the bundle format (a training
  run's config.json, also in its workdir, does not)."""
  path = os.fspath(path)
  if storage.is_remote(path):
    url = storage.join(path, CONFIG_FILE)
    if not storage.isfile(url):
      return False
    path = os.path.dirname(storage.pull(url))
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    return False
  try:
    with open(config_path, encoding="utf-8") as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def read_config(path: str) -> dict[str, Any]:
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isdir(path):
    raise BundleError(f"{path}: no such directory (expected a model bundle)")
  if not os.path.isfile(config_path):
    raise BundleError(f"{path}: no {CONFIG_FILE}; not a model bundle (a training run's workdir "
                      "can be turned into one with `sw-zoo export WORKDIR --out DIR`)")
  try:
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise BundleError(f"{config_path}: not valid JSON ({e}); the file is damaged") from None
  if not isinstance(config, dict) or config.get("format") != FORMAT:
    raise BundleError(f"{config_path}: 'format' is {config.get('format') if isinstance(config, dict) else None!r}, "
                      f"not {FORMAT!r}: not a model bundle")
  version = config.get("format_version")
  if not isinstance(version, int) or version > FORMAT_VERSION:
    raise BundleError(f"{config_path}: format_version {version!r} is newer than this sw_zoo reads "
                      f"({FORMAT_VERSION}); upgrade sw_zoo")
  for key in ("model", "image_size", "params"):
    if key not in config:
      raise BundleError(f"{config_path}: missing key {key!r}")
  return config


def _read_params(path: str, config: Mapping[str, Any]) -> dict[str, Any]:
  entry = config["params"]
  params_path = os.path.join(path, entry.get("file", PARAMS_FILE))
  if entry.get("format", "flax_msgpack") != "flax_msgpack":
    raise BundleError(f"{path}: params format {entry.get('format')!r} is not supported (flax_msgpack)")
  if not os.path.isfile(params_path):
    raise BundleError(f"{params_path}: missing")
  with open(params_path, "rb") as f:
    blob = f.read()
  if "bytes" in entry and len(blob) != entry["bytes"]:
    raise BundleError(f"{params_path}: {len(blob)} bytes, config.json says {entry['bytes']}: the file is "
                      "truncated or damaged")
  digest = hashlib.sha256(blob).hexdigest()
  if entry.get("sha256") and digest != entry["sha256"]:
    raise BundleError(f"{params_path}: sha256 {digest} does not match config.json ({entry['sha256']}): "
                      "the file is damaged or was replaced")
  try:
    tree = serialization.msgpack_restore(blob)
  except Exception as e:  # msgpack raises several types for malformed input
    raise BundleError(f"{params_path}: cannot decode ({type(e).__name__}: {e})") from None
  if not isinstance(tree, dict):
    raise BundleError(f"{params_path}: expected a tree of named arrays, got {type(tree).__name__}")
  return tree


def _compare(have: Mapping[str, tuple[tuple[int, ...], str]], want: Mapping[str, tuple[tuple[int, ...], str]],
             have_name: str, want_name: str) -> list[str]:
  problems = [f"{p}: in {want_name} but not in {have_name}" for p in sorted(set(want) - set(have))]
  problems += [f"{p}: in {have_name} but not in {want_name}" for p in sorted(set(have) - set(want))]
  for p in sorted(set(have) & set(want)):
    if tuple(have[p][0]) != tuple(want[p][0]) or have[p][1] != want[p][1]:
      problems.append(f"{p}: {have_name} has {list(have[p][0])} {have[p][1]}, "
                      f"{want_name} has {list(want[p][0])} {want[p][1]}")
  return problems


def _raise_if(problems: list[str], what: str) -> None:
  if problems:
    shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
    raise BundleError(f"{what}:\n  {shown}")


def read_bundle(path: str | os.PathLike) -> Bundle:
  """Loads and verifies a bundle directory (see the module docstring)."""
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  config = read_config(path)
  config_path = os.path.join(path, CONFIG_FILE)
  spec = spec_from_json(config["model"], config_path)
  params = _read_params(path, config)
  flat = _flat(params)
  have = {p: (a.shape, a.dtype.name) for p, a in flat.items()}
  declared = {p: (tuple(t["shape"]), t["dtype"]) for p, t in config["params"].get("tensors", {}).items()}
  _raise_if(_compare(have, declared, PARAMS_FILE, "config.json params.tensors"),
            f"{path}: {PARAMS_FILE} does not hold the tensors config.json lists")
  try:
    expected = param_shapes(spec, int(config["image_size"]))
  except ValueError as e:
    raise BundleError(f"{config_path}: model {config['model']} cannot be built: {e}") from None
  _raise_if(_compare(have, expected, PARAMS_FILE, f"model {spec.name!r}"),
            f"{path}: the params do not fit the model config.json describes")
  tags_path = os.path.join(path, config.get("tags", {}).get("file", TAGS_FILE))
  if not os.path.isfile(tags_path):
    raise BundleError(f"{tags_path}: missing (the model's tag names)")
  tags = vocab_lib.read_selected_tags(tags_path)
  if len(tags) != spec.num_tags:
    raise BundleError(f"{tags_path}: {len(tags)} tags, but the model has {spec.num_tags} outputs")
  return Bundle(path=path, config=config, spec=spec, params=params, tags=tags)


def read_params_flat(path: str | os.PathLike) -> dict[tuple[str, ...], np.ndarray]:
  """{param path tuple: array} of a verified bundle (the warm-start format)."""
  bundle = read_bundle(path)
  return {tuple(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(bundle.params).items()}
