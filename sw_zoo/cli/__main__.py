"""`python -m sw_zoo.cli COMMAND ...`: the same as `sw-zoo COMMAND ...`."""
import sys

from sw_zoo.cli.commands import main

sys.exit(main())
