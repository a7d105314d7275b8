"""`sw-zoo export SOURCE`: a run's checkpoint (or a bundle) -> a model bundle, optionally with ONNX,
or exactly the files one WD-tagger tool loads.

    sw-zoo export runs/demo                      # latest checkpoint -> runs/demo/bundle
    sw-zoo export runs/demo/checkpoints/600 --out exports/demo-600 --onnx
    sw-zoo export runs/demo/bundle --onnx        # add model.onnx to an existing bundle
    sw-zoo export runs/demo --layout kohya --out sd-scripts/wd14_tagger_model --name me/demo
    sw-zoo export runs/demo --layout webui --out webui/models/TaggerOnnx --precision int8
    sw-zoo export runs/demo --layout comfyui --out ComfyUI/custom_nodes/ComfyUI-WD14-Tagger/models

A run's model, image size and threshold come from the `config.json` the trainer writes into its
workdir; its weights from the checkpoint (the EMA when the run kept one, unless --no-ema); its
tag names from the run's bundle, else the dataset's selected_tags.csv (or --tags).

Layouts (--out OUT, --name NAME; default name sw_zoo_<run folder>):
  bundle   OUT/config.json, params.msgpack, selected_tags.csv (+ model.onnx with --onnx): what
           sw_zoo and SmilingWolf's wd-tagger Space load. config.json `tags.layout` says which
           tools the rows fit; the rows stay the model's.
  kohya    OUT/<NAME, "/" -> "_">/model.onnx + selected_tags.csv, always 448 px; run
           tag_images_by_wd14_tagger.py --onnx --model_dir OUT --repo_id NAME.
  webui    OUT/wd-v1-4-convnextv2-tagger-v2/model.onnx + selected_tags.csv; OUT is the WebUI's
           models/TaggerOnnx. That folder name is the one the tagger extension loads as a local model
           (any other unknown name breaks its model list), so the model shows under it.
  comfyui  OUT/<NAME>.onnx + OUT/<NAME>.csv; OUT is ComfyUI-WD14-Tagger's models/ folder (only
           those two files are ours; others there are never touched).
A tool layout, or a --precision other than fp32, implies --onnx. The tool layouts need rows in
rating, general, character order (the rows and the graph's outputs are permuted together, without
loss) and some need exactly 4 ratings / no other categories: such a mismatch is refused with what
the tool would get wrong, unless --force, which adapts the export (placeholder constant-0 ratings,
other categories written as general rows; sw_zoo/inference/tool_layouts.py has the details).

--image-size N builds the graph (and a bundle) at N px; NFNet has no position-dependent weights,
but scores shift with resolution, so evaluate the export. --precision fp16|int8 converts the graph
with onnxruntime's tools and checks it against float32 on the run's validation split (or
--check-images DIR): score differences, micro-F1 of both, their agreement and img/s are printed
and stored in model.onnx's metadata (`sw_zoo.precision`) and, for a bundle, config.json `onnx`.
Nothing is written until every check passed; nothing sw_zoo did not write is replaced without
--force, and a failed export never replaces a good one.
"""
from __future__ import annotations

from sw_zoo.cli import common

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
  from sw_zoo.inference import onnx_precision, tool_layouts

  parser = common.parser("sw-zoo export", __doc__)
  parser.add_argument("source", help="a run's workdir (latest checkpoint), checkpoints/<step>, or a bundle")
  parser.add_argument("--out", default=None,
                      help="bundle directory to write (default: <workdir>/bundle for a run, the bundle itself); "
                           "with --layout: the tool's models folder (required)")
  parser.add_argument("--onnx", action="store_true", help="also write model.onnx (WD-tagger layout)")
  parser.add_argument("--layout", default=tool_layouts.BUNDLE, choices=list(tool_layouts.LAYOUTS),
                      help="which tool's files to write (default: bundle)")
  parser.add_argument("--name", default=None,
                      help="model name in the tool's folder (kohya: the --repo_id; default sw_zoo_<run folder>; "
                           "webui: always wd-v1-4-convnextv2-tagger-v2, the name the extension loads)")
  parser.add_argument("--image-size", type=int, default=None,
                      help="graph (and bundle) image size in px (default: the trained size; kohya: 448 only)")
  parser.add_argument("--precision", default=onnx_precision.FP32, choices=list(onnx_precision.PRECISIONS),
                      help="model.onnx precision (default fp32); fp16/int8 are checked against fp32")
  parser.add_argument("--check-images", default=None,
                      help="folder of images to check fp16/int8 on (default: the run's validation split)")
  parser.add_argument("--no-ema", action="store_true", help="export the raw params even if the run kept an EMA")
  parser.add_argument("--tags", default=None, help="selected_tags.csv of the run's dataset (default: found)")
  parser.add_argument("--force", action="store_true",
                      help="replace --out (or the tool's files) even if sw_zoo did not write them (never the "
                           "export's own inputs), and write adapted tool layouts the rows do not fit")
  parser.add_argument("--threshold", type=float, default=None,
                      help="threshold for every category (default: the run's config.eval.threshold)")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from sw_zoo.inference import run_bundle, tool_layouts

  try:
    done = run_bundle.export(args.source, args.out, onnx=args.onnx, use_ema=not args.no_ema, tags_path=args.tags,
                             threshold=args.threshold, force=args.force, layout=args.layout,
                             image_size=args.image_size, precision=args.precision, name=args.name,
                             check_images=args.check_images)
  except run_bundle.NothingToDo as e:
    print(f"sw-zoo export: {e}", file=sys.stderr)
    return 2
  except tool_layouts.LayoutRefused as e:
    print(f"sw-zoo export: refused: {e}", file=sys.stderr)
    return 2
  except ImportError as e:
    print(f"sw-zoo export: {e}. ONNX export needs the export extra: pip install -e '.[export]'", file=sys.stderr)
    return 1
  for note in done.notes:
    print(f"note: {note}")
  if done.precision:
    from sw_zoo.inference import onnx_precision

    print(onnx_precision.summary(done.precision))
  if done.layout == tool_layouts.BUNDLE:
    print(f"Wrote bundle {done.path} ({done.spec.name}, {done.num_tags} tags, {done.image_size} px"
          + (", with model.onnx" if done.onnx else "") + ")")
  else:
    print(f"Wrote the {done.layout} layout ({done.spec.name}, {done.num_tags} outputs, {done.image_size} px, "
          f"{args.precision}):")
    for path in done.files:
      print(f"  {path}")
    print(f"Use: {done.hint}")
  return 0
