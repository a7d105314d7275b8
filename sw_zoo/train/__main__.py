"""`python -m sw_zoo.train ...`: the documented entry point, the same as `sw-zoo train ...` (see
`sw_zoo/cli/train.py`). The one place the train package refers up to the CLI (an entry point,
exempted in the import contract)."""
import sys

from sw_zoo.cli import commands

sys.exit(commands.main(["train", *sys.argv[1:]]))
