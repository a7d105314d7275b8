"""`sw-zoo` command line: one entry point, a subcommand per job.

  sw-zoo train --config configs/demo.py --workdir runs/demo
  sw-zoo synthetic --out data/synthetic
"""
from __future__ import annotations

import sys

USAGE = """usage: sw-zoo COMMAND [ARGS...]

commands:
  train       train or resume a tagger        (sw-zoo train --config configs/demo.py --workdir runs/demo)
  synthetic   generate the built-in dataset   (sw-zoo synthetic --out data/synthetic)

Run `sw-zoo COMMAND --help` for a command's options."""


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
  if command == "synthetic":
    from data_prep import synthetic

    return synthetic.main(rest) or 0
  print(f"sw-zoo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
