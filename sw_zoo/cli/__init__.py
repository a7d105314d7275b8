"""The `sw-zoo` command line: one command table (`commands.COMMANDS`), one module per command
that parses arguments and calls library code, and `common` (multi-host start-up, expected errors
-> one line and exit code 2). Nothing in the library imports this package."""
from sw_zoo.cli.commands import main

__all__ = ["main"]
