"""Bundles from training runs: `write_run_bundle` at the end of `train_and_evaluate`, and
`export` for `sw-zoo export` (a workdir, one checkpoint step, or a bundle -> a bundle).

A run's model, image size and threshold come from its `config.json`; its weights from the
checkpoint (the EMA when the run kept one, unless use_ema=False); its tag names from the run's
bundle, else the dataset's selected_tags.csv (or `tags_path`). `onnx=True` adds `model.onnx` in
the WD-tagger layout (`onnx_export`): the bundle directory then works as-is in SmilingWolf's
wd-tagger Space. `layout` writes instead exactly the files another tool loads (kohya, webui,
comfyui: `tool_layouts`, which also checks and, where it must, adapts the tag rows);
`image_size` builds the graph (and a bundle) at another size; `precision` converts the graph
(`onnx_precision`) and checks it against float32 on the run's validation images.

Every argument is checked, the vocabulary is checked against the tool, the check images are
found and the output is judged writable before anything is written; outputs are written to a
temp name and renamed into place, so a failed export never replaces a good one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Any

import numpy as np

from sw_zoo import run_dir, storage
from sw_zoo.data.atomic_file import OutputRefused, atomic_write_bytes, check_output_dir, replace_dir, write_synced
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.inference import model_source
from sw_zoo.inference import onnx_precision
from sw_zoo.inference import tool_layouts
from sw_zoo.evaluation.thresholds import DEFAULT_THRESHOLD
from sw_zoo.models.spec import spec_from_run_config


def write_run_bundle(workdir: str, params: Any, config: Any, tags: vocab_lib.TagVocab, *, step: int,
                     thresholds: dict[str, Any] | None = None) -> str | None:
  """Writes `<workdir>/bundle` from a finished run's eval params; returns its path on process 0.
  `thresholds`: the tuned entry (`thresholds.tune`), else config.eval.threshold everywhere.

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
      thresholds=thresholds or bundle_lib.threshold_config(float(config["eval"]["threshold"])),
      source={"workdir": run_dir.absolute(workdir), "step": int(step), "weights": run_dir.weights_kind(config)})


@dataclasses.dataclass
class Exported:
  path: str
  spec: Any
  num_tags: int
  image_size: int  # the bundle's (for the bundle layout) or the graph's
  onnx: bool
  layout: str = tool_layouts.BUNDLE
  files: list[str] = dataclasses.field(default_factory=list)  # what was written
  notes: list[str] = dataclasses.field(default_factory=list)  # what the user should know
  precision: dict[str, Any] | None = None  # the onnx_precision.compare report
  hint: str = ""  # how the tool is pointed at it


class NothingToDo(ValueError):
  """The source is already the bundle asked for."""


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096  # NFNet downsamples 32x; beyond 4096 px is a typo


@dataclasses.dataclass(frozen=True)
class Request:
  """The checked arguments of one export (`check_request`)."""
  layout: str
  onnx: bool
  image_size: int | None
  precision: str
  name: str | None
  check_images: str | None


def check_request(*, layout: str = tool_layouts.BUNDLE, onnx: bool = False, image_size: int | None = None,
                  precision: str = onnx_precision.FP32, out: str | None = None, name: str | None = None,
                  check_images: str | None = None, force: bool = False) -> Request:
  """Validates the arguments before anything is read or written. A tool layout or a precision
  other than fp32 implies ONNX (they only make sense for model.onnx); tool layouts need --out
  (the tool's models folder); kohya feeds 448 px to the graph, so it refuses another size."""
  if layout not in tool_layouts.LAYOUTS:
    raise ValueError(f"--layout {layout!r}: choose one of {', '.join(tool_layouts.LAYOUTS)}")
  if precision not in onnx_precision.PRECISIONS:
    raise ValueError(f"--precision {precision!r}: choose one of {', '.join(onnx_precision.PRECISIONS)}")
  if image_size is not None and not (isinstance(image_size, int) and MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
    raise ValueError(f"--image-size {image_size!r}: must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
                     "(the model downsamples 32x)")
  tool = tool_layouts.LAYOUTS[layout]
  if tool.fixed_image_size and image_size is not None and image_size != tool.fixed_image_size:
    raise ValueError(f"--image-size {image_size} with --layout {layout}: {tool.tool} resizes every image to "
                     f"{tool.fixed_image_size} px (hard-coded) and feeds that to the graph, so a graph at "
                     f"{image_size} px would fail on its first batch with an input shape error. Leave out "
                     f"--image-size (the {layout} layout is always {tool.fixed_image_size} px)")
  if layout != tool_layouts.BUNDLE:
    if not out:
      raise ValueError(f"--layout {layout} needs --out: {tool.out} (files land as {tool.files})")
    if name is not None:
      tool_layouts.check_name(name, layout)
      if layout == tool_layouts.WEBUI:
        tool_layouts.check_webui_name(name, force=force)
  elif name is not None:
    raise ValueError("--name names the model in a tool's folder; use it with --layout kohya|webui|comfyui")
  if check_images is not None:
    if precision == onnx_precision.FP32:
      raise ValueError("--check-images is for --precision fp16|int8 (the images the converted graph is checked on)")
    if not os.path.isdir(check_images):
      raise ValueError(f"--check-images {check_images}: not a directory")
  onnx = onnx or layout != tool_layouts.BUNDLE or precision != onnx_precision.FP32
  if image_size is None and tool.fixed_image_size:
    image_size = tool.fixed_image_size
  return Request(layout, onnx, image_size, precision, name, check_images)


def export(source_path: str, out: str | None = None, *, onnx: bool = False, use_ema: bool = True,
           tags_path: str | None = None, threshold: float | None = None, force: bool = False,
           layout: str = tool_layouts.BUNDLE, image_size: int | None = None, precision: str = onnx_precision.FP32,
           name: str | None = None, check_images: str | None = None,
           check_limit: int = onnx_precision.CHECK_LIMIT) -> Exported:
  """Writes the bundle of `source_path` (see the module docstring) to `out` (default: a run's
  `<workdir>/bundle`, or the bundle itself when adding model.onnx or a threshold), or with a
  tool `layout`, that tool's files under `out`."""
  req = check_request(layout=layout, onnx=onnx, image_size=image_size, precision=precision, out=out, name=name,
                      check_images=check_images, force=force)
  source = model_source.load(source_path, use_ema=use_ema)
  size = req.image_size or source.image_size
  notes: list[str] = []
  if size != source.image_size:
    check = "`sw-zoo eval OUT --data DATA`" if req.layout == tool_layouts.BUNDLE else \
        f"a bundle at that size (`sw-zoo export SOURCE --out DIR --image-size {size}`, then `sw-zoo eval DIR --data DATA`)"
    notes.append(f"the graph runs at {size} px but the model was trained at {source.image_size} px: scores shift "
                 f"with resolution, so evaluate {check}; thresholds may need tuning again")
  if req.layout != tool_layouts.BUNDLE:
    return _export_for_tool(source, out, req, size, notes, tags_path=tags_path, threshold=threshold, force=force,
                            check_limit=check_limit)
  if source.kind == "bundle":
    out = run_dir.absolute(out) if out else source.home
    if out == source.home and not req.onnx and threshold is None and size == source.image_size:
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
  layout_entry = tool_layouts.describe(tags)
  for tool, verdict in layout_entry["tools"].items():
    if verdict != "fits":
      notes.append(f"{tool}: {verdict}" + ("" if tool == tool_layouts.SPACE else f" (use --layout {tool})"))
  check = _check_set(source, req, size, check_limit)
  params = source.nested_params()
  extra, onnx_entry, report = {}, None, None
  if req.onnx:
    plan = tool_layouts.plan(tags, tool_layouts.BUNDLE)
    model, report = _graph(source, params, tags, plan, size, thresholds, req.precision, check)
    extra[bundle_lib.ONNX_FILE] = model
    onnx_entry = {"file": bundle_lib.ONNX_FILE, "image_size": size, "precision": req.precision,
                  **({"check": report} if report else {})}
  written = bundle_lib.write_bundle(out, params=params, spec=source.spec, image_size=size, tags=tags,
                                    thresholds=thresholds, source=source.provenance, extra_files=extra, force=force,
                                    protect=protect, tags_layout=layout_entry, onnx=onnx_entry)
  files = [bundle_lib.CONFIG_FILE, bundle_lib.PARAMS_FILE, bundle_lib.TAGS_FILE] + list(extra)
  return Exported(written, source.spec, len(tags), size, req.onnx, files=[os.path.join(str(written), f) for f in files],
                  notes=notes, precision=report, hint=tool_layouts.usage_hint(tool_layouts.BUNDLE, written, ""))


def _export_for_tool(source: model_source.ModelSource, out: str, req: Request, size: int, notes: list[str], *,
                     tags_path: str | None, threshold: float | None, force: bool, check_limit: int) -> Exported:
  """The files `req.layout`'s tool loads (tool_layouts), checked, adapted and written safely."""
  out = os.path.abspath(os.path.expanduser(out))
  name = req.name or tool_layouts.default_name(source.root, req.layout)
  where = tool_layouts.target(req.layout, out, name)
  tags = source.find_tags(tags_path)
  plan = tool_layouts.plan(tags, req.layout, force=force)  # LayoutRefused explains what and why
  notes.extend(f"{req.layout}: {n}" for n in plan.notes)
  csv_bytes = _csv_bytes(plan.tags)
  _check_tool_target(where, req.layout, csv_bytes, force=force, protect=[source.root])
  check = _check_set(source, req, size, check_limit)
  if threshold is not None:
    thresholds = bundle_lib.threshold_config(threshold)
  else:  # thresholds `sw-zoo eval` tuned into the run's bundle for these weights, else the run's
    tuned = source.same_weights(run_dir.bundle_dir(source.root)) if source.kind == "checkpoint" else None
    thresholds = (tuned or {}).get("thresholds") or source.thresholds
  model, report = _graph(source, source.nested_params(), tags, plan, size, thresholds, req.precision, check,
                         csv_sha256=hashlib.sha256(csv_bytes).hexdigest())
  files = {where.tags_path: csv_bytes, where.onnx_path: model}
  if where.folder is not None:
    def fill(tmp: str) -> None:
      for path, data in files.items():
        write_synced(os.path.join(tmp, os.path.basename(path)), data)

    replace_dir(where.folder, fill, is_own=_is_tool_folder, what=f"an sw_zoo export for {req.layout}", force=force,
                protect=[source.root])
  else:
    os.makedirs(out, exist_ok=True)
    for path, data in files.items():  # the csv first: a crash in between leaves a csv a rerun may replace
      atomic_write_bytes(path, data)
  return Exported(where.folder or out, source.spec, len(plan.tags), size, True, layout=req.layout,
                  files=list(files), notes=notes, precision=report,
                  hint=tool_layouts.usage_hint(req.layout, out, name))


# ---- The graph -----------------------------------------------------------------------------------


def _graph(source: model_source.ModelSource, params: dict[str, Any], tags: vocab_lib.TagVocab,
           plan: tool_layouts.Plan, size: int, thresholds: dict[str, Any], precision: str,
           check: onnx_precision.CheckSet | None, csv_sha256: str | None = None) -> tuple[bytes, dict[str, Any] | None]:
  """model.onnx bytes (rows as `plan` says, at `size`, in `precision`) and the precision report."""
  from sw_zoo.inference import onnx_export

  if not plan.identity and "het" in params:
    # Its fixed evaluation noise is drawn per model row: re-ordered rows would get other draws.
    raise ValueError(f"{source.described} has a heteroscedastic tag head, which exports only in its own tag "
                     f"order; this layout ({plan.layout}) re-orders or pads the rows: export with the bundle's "
                     "own selected_tags.csv instead")
  head_params = params if plan.identity else tool_layouts.adapt_head(params, plan.rows)
  meta = tool_layouts.metadata(plan.layout, tags, plan)
  if csv_sha256:
    meta["sw_zoo.tags.sha256"] = csv_sha256  # which csv this graph was written with (ownership check)
  bundle = bundle_lib.Bundle(path="", config={"image_size": size, "thresholds": thresholds},
                             spec=dataclasses.replace(source.spec, num_tags=len(plan.tags)), params=head_params,
                             tags=plan.tags)
  reference = onnx_export.bundle_to_onnx_bytes(bundle, metadata=meta)
  if precision == onnx_precision.FP32:
    return reference, None
  converted = onnx_precision.convert(reference, precision)
  rows = plan.rows
  real = rows >= 0
  categories = np.where(real, tags.categories[np.maximum(rows, 0)], -1)
  by_category = dict(thresholds.get("by_category") or {})
  default = thresholds.get("default")
  default = DEFAULT_THRESHOLD if default is None else float(default)
  per_row = np.array([float(by_category.get(vocab_lib.category_name(c)) or default) if c >= 0 else 1.0
                      for c in categories], np.float32)
  scored = real & (categories != vocab_lib.CATEGORY_RATING)
  labels = None
  if check.labels is not None:
    labels = np.zeros((len(check.labels), len(rows)), np.float32)
    labels[:, real] = check.labels[:, rows[real]]
  report = onnx_precision.compare(reference, converted, precision, check, thresholds=per_row, scored=scored,
                                  labels=labels)
  return onnx_precision.with_metadata(converted, {"sw_zoo.precision": json.dumps(report, sort_keys=True)}), report


def _check_set(source: model_source.ModelSource, req: Request, size: int,
               limit: int) -> onnx_precision.CheckSet | None:
  """The images a converted graph is checked on: --check-images, else the run's validation split;
  none at all refuses a converted export (an unchecked int8 model is not shipped)."""
  if req.precision == onnx_precision.FP32:
    return None
  if req.check_images:
    return onnx_precision.folder_check_set(req.check_images, image_size=size, limit=limit)
  data_dir = _data_dir(source)
  if data_dir:
    try:
      return onnx_precision.split_check_set(data_dir, image_size=size, limit=limit)
    except (OSError, KeyError, ValueError) as e:
      problem = f"the run's dataset {data_dir} has no usable validation split ({e})"
  else:
    problem = f"{source.described} names no dataset"
  raise ValueError(f"--precision {req.precision}: {problem}; pass --check-images DIR with a few hundred images to "
                   "check the converted graph against float32")


def _data_dir(source: model_source.ModelSource) -> str | None:
  data_dir = source.settings.get("data_dir")
  workdir = source.provenance.get("workdir")
  if not data_dir and workdir and os.path.isfile(os.path.join(str(workdir), run_dir.CONFIG_FILE)):
    try:  # a bundle made from a run: that run's dataset, when it is still here
      config = run_dir.read_config(str(workdir))
      data_dir = run_dir.lookup(config, "data.dir", str(workdir), None)
    except (OSError, ValueError, KeyError):
      data_dir = None
  return run_dir.absolute(str(data_dir)) if data_dir else None


# ---- Tool outputs: ownership and writing --------------------------------------------------------


def _csv_bytes(tags: vocab_lib.TagVocab) -> bytes:
  with tempfile.TemporaryDirectory(prefix="sw_zoo_tags.") as tmp:
    path = os.path.join(tmp, bundle_lib.TAGS_FILE)
    vocab_lib.write_selected_tags(path, tags)  # the one writer of the format
    with open(path, "rb") as f:
      return f.read()


def _onnx_metadata(path: str) -> dict[str, str] | None:
  """metadata_props of an ONNX file sw_zoo wrote (producer "sw_zoo"), else None."""
  import onnx

  try:
    model = onnx.load(path, load_external_data=False)
  except Exception:  # not ONNX at all: certainly not ours
    return None
  if model.producer_name != onnx_precision.PRODUCER:
    return None
  return {p.key: p.value for p in model.metadata_props}


def _is_tool_folder(path: str) -> bool:
  """A folder holding only what a kohya / webui export writes, with a model.onnx sw_zoo made."""
  names = set(os.listdir(path))
  return names <= {bundle_lib.ONNX_FILE, bundle_lib.TAGS_FILE} and bundle_lib.ONNX_FILE in names \
      and _onnx_metadata(os.path.join(path, bundle_lib.ONNX_FILE)) is not None


def _check_tool_target(where: tool_layouts.Target, layout: str, csv_bytes: bytes, *, force: bool,
                       protect: list[str]) -> None:
  """Refuses (OutputRefused) to replace what sw_zoo did not write, before anything is written."""
  if where.folder is not None:
    check_output_dir(where.folder, is_own=_is_tool_folder, what=f"an sw_zoo export for {layout}", force=force,
                     protect=protect)
    return
  out = os.path.dirname(where.onnx_path)
  if os.path.lexists(out) and not os.path.isdir(out):
    raise OutputRefused(f"--out {out}: exists and is not a directory")
  meta = _onnx_metadata(where.onnx_path) if os.path.lexists(where.onnx_path) else None
  foreign = []
  if os.path.lexists(where.onnx_path) and meta is None:
    foreign.append(f"{where.onnx_path} (not an ONNX model written by sw_zoo)")
  if os.path.lexists(where.tags_path):
    with open(where.tags_path, "rb") as f:
      existing = f.read()
    ours = existing == csv_bytes or (meta or {}).get("sw_zoo.tags.sha256") == hashlib.sha256(existing).hexdigest()
    if not ours:
      foreign.append(f"{where.tags_path} (not the tag list of an sw_zoo model of that name)")
  if foreign and not force:
    raise OutputRefused("refusing to replace files sw_zoo did not write: " + "; ".join(foreign)
                        + " (choose another --name, or pass --force to replace them)")
