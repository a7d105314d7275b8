"""An ordered, bounded, spawn-safe parallel map for data_prep.

`multiprocessing.Pool.imap` reads its whole input iterator ahead of the workers (its task-feeder
thread does not wait), so memory grows with the dataset. `ordered_map` keeps at most
`max_pending` batches in flight and pulls the next batch from the input only when one is
consumed, so a generator over millions of posts stays lazy.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _run_batch(fn: Callable[[T], R], batch: list[T]) -> list[R]:
  return [fn(x) for x in batch]


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
  """Linux: asks the kernel to SIGKILL this process when its parent dies.

  A SIGKILLed parent cannot shut its pool down, and the workers (which hold the pipe that keeps
  multiprocessing's resource tracker alive) would otherwise run on as orphans. Elsewhere a no-op.
  """
  if not sys.platform.startswith("linux"):
    return
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  except (OSError, AttributeError):
    return  # No prctl (unusual libc): the workers just lose this safety net.
  # The parent may have died before prctl took effect; then nothing would ever signal us.
  if os.getppid() != parent_pid:
    os._exit(1)


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple, parent_pid: int) -> None:
  die_with_parent(parent_pid)
  # Ctrl-C reaches the whole process group; the parent handles it and shuts the workers down.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if initializer is not None:
    initializer(*initargs)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                batch_size: int = 8, max_pending: int | None = None) -> Iterator[R]:
  """Yields fn(x) for x in items, in order, computed by `workers` spawned processes.

  `fn` and `initializer` must be module-level functions (they are pickled by reference).
  workers <= 1 runs everything in this process (same results, easier debugging).
  """
  if workers <= 1:
    if initializer is not None:
      initializer(*initargs)
    yield from map(fn, items)
    return
  iterator = iter(items)
  max_pending = max_pending or 4 * workers
  # spawn, not fork: callers may have JAX / grain threads running, which fork does not survive.
  executor = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
      initargs=(initializer, initargs, os.getpid()))
  pending: collections.deque = collections.deque()

  def submit() -> bool:
    batch = list(itertools.islice(iterator, batch_size))
    if batch:
      pending.append(executor.submit(_run_batch, fn, batch))
    return bool(batch)

  try:
    while len(pending) < max_pending and submit():
      pass
    while pending:
      results = pending.popleft().result()
      submit()
      yield from results
  finally:
    executor.shutdown(wait=True, cancel_futures=True)
