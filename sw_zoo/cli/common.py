"""What every `sw-zoo` command shares: multi-host start-up, and one error path.

Expected errors (a bad config key, a missing dataset or checkpoint, a damaged bundle, a bad
argument) are the user's to fix: they print one `sw-zoo COMMAND: error: ...` line and exit 2.
Anything else is a bug and keeps its traceback. `--debug` (or SW_ZOO_DEBUG=1) shows the traceback
of expected errors too.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

EXIT_USAGE = 2


def parser(prog: str, doc: str, *, epilog: bool = True) -> argparse.ArgumentParser:
  """A command's parser whose --help shows its module docstring: the first paragraph as the
  description, the rest (examples, notes) as the epilog, line breaks kept."""
  head, _, rest = doc.strip().partition("\n\n")
  return argparse.ArgumentParser(prog=prog, description=head, epilog=rest if epilog and rest else None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def expected_errors() -> tuple[type[BaseException], ...]:
  """Exception types that describe bad input rather than a bug. OSError covers missing files,
  permissions and full disks; ValueError covers ConfigError, BundleError and bad values."""
  return (OSError, ValueError, KeyError)


def debug_requested(argv: list[str]) -> bool:
  return "--debug" in argv or os.environ.get("SW_ZOO_DEBUG", "").lower() in ("1", "true", "yes")


def error_message(err: BaseException) -> str:
  # KeyError's str() quotes its message; show it as written.
  text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
  return text or type(err).__name__


def run_command(name: str, fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
  """Runs one command's `main(argv)`; expected errors become one line on stderr and exit code 2."""
  debug = debug_requested(argv)
  argv = [a for a in argv if a != "--debug"]
  try:
    return fn(argv) or 0
  except expected_errors() as err:
    if debug:
      raise
    print(f"sw-zoo {name}: error: {error_message(err)} (--debug shows the traceback)", file=sys.stderr)
    return EXIT_USAGE


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """jax.distributed.initialize() for a multi-process run (TPU pods, multi-node GPU, several CPU
  processes). Unset arguments are left to JAX's cluster auto-detection (TPU, Slurm, Open MPI)."""
  import jax

  # Gloo is this JAX's default for CPU collectives, but an older default (none) would make a
  # multi-process CPU run fail at its first collective; set it explicitly. TPU/GPU ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  args = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  jax.distributed.initialize(**{k: v for k, v in args.items() if v is not None})
