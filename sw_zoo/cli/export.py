"""`sw-zoo export SOURCE`: a run's checkpoint (or a bundle) -> a model bundle, optionally with ONNX.

    sw-zoo export runs/demo                      # latest checkpoint -> runs/demo/bundle
    sw-zoo export runs/demo/checkpoints/600 --out exports/demo-600 --onnx
    sw-zoo export runs/demo/bundle --onnx        # add model.onnx to an existing bundle

A run's model, image size and threshold come from the `config.json` the trainer writes into its
workdir; its weights from the checkpoint (the EMA when the run kept one, unless --no-ema); its
tag names from the run's bundle, else the dataset's selected_tags.csv (or --tags).
`--onnx` adds `model.onnx` in the WD-tagger layout: the bundle directory then works as-is in
WD-tagger tools.
"""
from __future__ import annotations

from sw_zoo.cli import common

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
  parser = common.parser("sw-zoo export", __doc__)
  parser.add_argument("source", help="a run's workdir (latest checkpoint), checkpoints/<step>, or a bundle")
  parser.add_argument("--out", default=None,
                      help="bundle directory to write (default: <workdir>/bundle for a run, the bundle itself)")
  parser.add_argument("--onnx", action="store_true", help="also write model.onnx (WD-tagger layout)")
  parser.add_argument("--no-ema", action="store_true", help="export the raw params even if the run kept an EMA")
  parser.add_argument("--tags", default=None, help="selected_tags.csv of the run's dataset (default: found)")
  parser.add_argument("--force", action="store_true",
                      help="replace --out even if it holds something else (never its own inputs)")
  parser.add_argument("--threshold", type=float, default=None,
                      help="threshold for every category (default: the run's config.eval.threshold)")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from sw_zoo.inference import run_bundle

  try:
    done = run_bundle.export(args.source, args.out, onnx=args.onnx, use_ema=not args.no_ema, tags_path=args.tags,
                             threshold=args.threshold, force=args.force)
  except run_bundle.NothingToDo as e:
    print(f"sw-zoo export: {e}", file=sys.stderr)
    return 2
  except ImportError as e:
    print(f"sw-zoo export: {e}. ONNX export needs the export extra: pip install -e '.[export]'", file=sys.stderr)
    return 1
  print(f"Wrote bundle {done.path} ({done.spec.name}, {done.num_tags} tags, {done.image_size} px"
        + (", with model.onnx" if done.onnx else "") + ")")
  return 0
