"""`sw-zoo` command line: one entry point, a subcommand per job, all in one table.

  sw-zoo train --config configs/demo.py --workdir runs/demo
  sw-zoo synthetic --out data/synthetic
  sw-zoo prepare folder IMAGES_DIR --out data/mine
  sw-zoo inspect data/mine
  sw-zoo eval runs/demo --data data/synthetic
  sw-zoo pareto runs/l0_silu runs/l1_silu runs/l2_silu
  sw-zoo tag ~/images --model runs/demo/bundle --recursive
  sw-zoo export runs/demo --onnx
  sw-zoo find-missing-tags --data data/synthetic --model runs/demo --out review
  sw-zoo index data/synthetic --model runs/demo --out runs/demo_index
  sw-zoo search runs/demo_index --image query.jpg
  sw-zoo serve --model runs/demo/bundle --port 8000
"""
from __future__ import annotations

import importlib
import sys

from sw_zoo.cli.common import EXIT_USAGE, run_command

# command -> (module under sw_zoo.cli with main(argv) -> int, usage line). Each module is imported
# only when its command runs, so `sw-zoo --help` stays free of jax, torch and orbax.
COMMANDS = {
    "train": ("train", "train or resume a tagger        (sw-zoo train --config configs/demo.py --workdir runs/demo)"),
    "synthetic": ("synthetic", "generate the built-in dataset   (sw-zoo synthetic --out data/synthetic)"),
    "prepare": ("prepare", "convert images + tags to shards (sw-zoo prepare folder IMAGES_DIR --out data/mine;\n"
                "              sources: folder, manifest, danbooru, sqlite, e621, tfds)"),
    "inspect": ("inspect", "summarise a dataset + samples   (sw-zoo inspect data/mine --samples 16)"),
    "models": ("models", "list models / params and FLOPs  (sw-zoo models l2_silu_eca --image-size 384)"),
    "eval": ("eval", "score a checkpoint or bundle    (sw-zoo eval runs/demo --data data/synthetic --tta flip):\n"
             "              per-category table, per-tag CSV, PR / F1 plots, suggested thresholds"),
    "pareto": ("pareto", "F1 vs throughput over runs      (sw-zoo pareto runs/l0_silu runs/l1_silu --out runs/pareto)"),
    "tag": ("tag", "write caption files for images  (sw-zoo tag ~/images --model runs/demo/bundle --recursive):\n"
            "              kohya / WD-tagger style .txt beside each image"),
    "export": ("export", "a run -> model bundle (+ ONNX)  (sw-zoo export runs/demo --onnx: runs/demo/bundle, "
               "WD-tagger layout)"),
    "find-missing-tags": ("find_missing_tags", "suspect missing / wrong tags (sw-zoo find-missing-tags --data DIR "
                          "--model RUN --out review):\n              confident learning on held-out or "
                          "cross-validated predictions; CSV/JSON + contact sheet"),
    "folds": ("folds", "K-fold copies of a train split  (sw-zoo folds data/mine --folds 2 --out data/mine_folds)"),
    "index": ("index", "embed images into a search index (sw-zoo index IMAGES_OR_DATASET --model RUN --out INDEX)"),
    "search": ("search", "nearest images by image or tag  (sw-zoo search INDEX --image q.jpg | --tags \"1girl solo -hat\")"),
    "serve": ("serve", "tag images over HTTP + web page (sw-zoo serve --model runs/demo/bundle --port 8000)"),
}

USAGE = ("usage: sw-zoo COMMAND [ARGS...]\n\ncommands:\n"
         + "\n".join(f"  {name:<11} {line}" if len(name) <= 11 else f"  {name}  {line}"
                     for name, (_, line) in COMMANDS.items())
         + "\n\nRun `sw-zoo COMMAND --help` for a command's options; add --debug to see the traceback of an error.")


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"sw-zoo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return EXIT_USAGE
  module = importlib.import_module(f"sw_zoo.cli.{COMMANDS[command][0]}")
  return run_command(command, module.main, rest)


if __name__ == "__main__":
  sys.exit(main())
