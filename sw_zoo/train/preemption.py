"""Turns SIGTERM / SIGINT (TPU maintenance, Ctrl-C) into a clean stop with a final checkpoint.

The handler only sets a flag; the loop checks it between steps, saves, and returns. A second
Ctrl-C restores Python's default behaviour for people who really want out now.
"""
from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
  def __init__(self, check_every: int = 10):
    self.signal_name: str | None = None
    self._check_every = max(1, int(check_every))
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    print(f"\n{self.signal_name} received: saving a checkpoint at the end of this step, then stopping "
          "(Ctrl-C again to abort without saving).", flush=True)

  def should_stop(self, step: int) -> bool:
    """True on every process once any process was signalled.

    Across hosts the flag must be agreed, or one process would save and leave while the others
    wait in a collective; agreeing costs a host sync, so it is done every `check_every` steps.
    """
    local = self.signal_name is not None
    if jax.process_count() == 1:
      return local
    if step % self._check_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(local))
    if flags.any() and self.signal_name is None:
      self.signal_name = "peer"
    return bool(flags.any())

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
