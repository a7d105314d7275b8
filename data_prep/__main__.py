"""`python -m data_prep SOURCE_KIND ...` / `python -m data_prep inspect DATA`: the documented entry
points, the same as `sw-zoo prepare ...` / `sw-zoo inspect ...` (the commands live in the CLI;
this shim is exempted in the import contract)."""
import sys

from sw_zoo.cli import commands

argv = sys.argv[1:]
sys.exit(commands.main(argv if argv[:1] == ["inspect"] else ["prepare", *argv]))
