"""`sw-zoo` command line: one entry point, a subcommand per job.

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
"""
from __future__ import annotations

import importlib
import sys

USAGE = """usage: sw-zoo COMMAND [ARGS...]

commands:
  train       train or resume a tagger        (sw-zoo train --config configs/demo.py --workdir runs/demo)
  synthetic   generate the built-in dataset   (sw-zoo synthetic --out data/synthetic)
  prepare     convert images + tags to shards (sw-zoo prepare folder IMAGES_DIR --out data/mine;
              sources: folder, manifest, danbooru, sqlite, tfds)
  inspect     summarise a dataset + samples   (sw-zoo inspect data/mine --samples 16)
  models      list models / params and FLOPs  (sw-zoo models l2_silu_eca --image-size 384)
  eval        score a checkpoint or bundle    (sw-zoo eval runs/demo --data data/synthetic --tta flip):
              per-category table, per-tag CSV, PR / F1 plots, suggested thresholds
  pareto      F1 vs throughput over runs      (sw-zoo pareto runs/l0_silu runs/l1_silu --out runs/pareto)
  tag         write caption files for images  (sw-zoo tag ~/images --model runs/demo/bundle --recursive):
              kohya / WD-tagger style .txt beside each image
  export      a run -> model bundle (+ ONNX)  (sw-zoo export runs/demo --onnx: runs/demo/bundle, WD-tagger layout)
  find-missing-tags  suspect missing / wrong tags (sw-zoo find-missing-tags --data DIR --model RUN --out review):
              confident learning on held-out or cross-validated predictions; CSV/JSON + contact sheet
  folds       K-fold copies of a train split  (sw-zoo folds data/mine --folds 2 --out data/mine_folds)
  index       embed images into a search index (sw-zoo index IMAGES_OR_DATASET --model RUN --out INDEX)
  search      nearest images by image or tag  (sw-zoo search INDEX --image q.jpg | --tags "1girl solo -hat")

Run `sw-zoo COMMAND --help` for a command's options."""


# Commands whose handler takes the remaining arguments: command -> (module, function).
COMMANDS = {
    "synthetic": ("data_prep.synthetic", "main"),
    "models": ("sw_zoo.models.model_info", "main"),
    "eval": ("sw_zoo.eval_cli", "main"),
    "pareto": ("sw_zoo.pareto", "main"),
    "tag": ("sw_zoo.tag_cli", "main"),
    "export": ("sw_zoo.export", "main"),
    "find-missing-tags": ("sw_zoo.curation.find_missing_cli", "main"),
    "folds": ("sw_zoo.curation.folds_cli", "main"),
    "index": ("sw_zoo.curation.search_cli", "index_main"),
    "search": ("sw_zoo.curation.search_cli", "search_main"),
}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  command, rest = argv[0], argv[1:]
  if command == "train":
    from sw_zoo.train import __main__ as train_main

    sys.argv = ["sw-zoo train", *rest]
    train_main.run()
    return 0
  if command in ("prepare", "inspect"):
    from data_prep import __main__ as data_prep_main

    if command == "prepare" and (not rest or rest[0] in ("-h", "--help")):
      rest = ["--help"]  # `sw-zoo prepare --help` shows the source kinds.
    return data_prep_main.main(rest if command == "prepare" else ["inspect", *rest]) or 0
  if command in COMMANDS:
    # Each command's module is imported only when it runs (jax, torch, orbax load lazily).
    module_name, function = COMMANDS[command]
    return getattr(importlib.import_module(module_name), function)(rest) or 0
  print(f"sw-zoo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
