"""One shared step of the end-to-end benchmarks (own_data_f1, imbalance, heads): run a command
from the repository root with its output in a log file, timed; a failure ends the benchmark
naming the command and the log to read."""
from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_logged(cmd: list[str], log: str, *, who: str) -> float:
  """Wall seconds `cmd` took; exits with `who: ... failed (rc N); see LOG` if it failed."""
  start = time.perf_counter()
  with open(log, "w") as out:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
  if proc.returncode:
    sys.exit(f"{who}: {' '.join(cmd[:5])} ... failed (rc {proc.returncode}); see {log}")
  return time.perf_counter() - start
