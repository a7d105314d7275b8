"""Turns SIGTERM / SIGINT (TPU maintenance, Ctrl-C) into a clean stop with a final checkpoint.

The handler only sets a flag; the loop checks it between steps, saves, and returns. A second
Ctrl-C restores Python's default behaviour for people who really want out now.

Multi-host: a signal usually reaches one process (or reaches them at different steps), yet all
of them must stop after the same step, or one would save and leave while the others wait in the
next collective. `signal_name` is only set once the stop is agreed, so code that branches on it
(skip the evaluation when stopping) takes the same branch on every process.
- SIGTERM (the scheduler's preemption notice) is left to JAX's preemption service, which
  jax.distributed.initialize() starts: it catches the signal from startup on (a pod can spend
  minutes compiling) and agrees on a stop step through the coordination service, so checking
  it every step costs no device sync and the stop comes one step after the notice.
- SIGINT is caught here and agreed with an all-gather every `check_every` steps (the all-gather
  waits for the steps in flight, so it is not done every step).
"""
from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


def _preemption_service_running() -> bool:
  try:
    from jax._src import distributed
  except ImportError:
    return False
  state = distributed.global_state
  return getattr(state, "client", None) is not None and getattr(state, "preemption_sync_manager", None) is not None


class StopRequest:
  def __init__(self, check_every: int = 10):
    # The agreed stop: None until every process knows; then the signal's name ("SIGINT", or
    # "SIGINT on process 3" when another process was signalled).
    self.signal_name: str | None = None
    self._received: int = 0  # this process's own signal number, 0 for none
    self._multihost = jax.process_count() > 1
    self._jax_preemption = self._multihost and _preemption_service_running()
    self._check_every = max(1, int(check_every))
    self._previous = {}
    signals = (signal.SIGINT,) if self._jax_preemption else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self._received and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self._received = int(signum)
    name = signal.Signals(signum).name
    if not self._multihost:
      self.signal_name = name
    when = "the end of this step" if not self._multihost else "a step all processes agree on"
    print(f"\n{name} received: saving a checkpoint at {when}, then stopping "
          "(Ctrl-C again to abort without saving).", flush=True)

  def should_stop(self, step: int) -> bool:
    """True on every process once any process was signalled; every process calls this before
    each step, with the same `step`."""
    if self.signal_name is not None or not self._multihost:
      return self.signal_name is not None
    if self._jax_preemption and multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = "SIGTERM (preemption notice)"
      return True
    if step % self._check_every:
      return False
    received = np.asarray(multihost_utils.process_allgather(np.int32(self._received))).reshape(-1)
    signalled = np.flatnonzero(received)
    if not len(signalled):
      return False
    if self._received:
      self.signal_name = signal.Signals(self._received).name
    else:
      first = int(signalled[0])
      self.signal_name = f"{signal.Signals(int(received[first])).name} on process {first}"
    return True

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
