"""A `jax.profiler` trace of a window of training steps (`config.profile`).

The trace covers `profile.steps` steps, starting `profile.skip_steps` after the step this
invocation starts (or resumes) at, so the first step's compilation stays out of it. Each traced
step is a `StepTraceAnnotation`, which is what XProf / TensorBoard's profile plugin use to find
step boundaries (step-time graph, input-pipeline analysis). The trace goes to
`<workdir>/profile` on process 0, or on every process (`profile.all_processes`) to
`<workdir>/profile/process_<i>`, as `plugins/profile/<timestamp>/<host>.xplane.pb` (TensorBoard,
XProf) plus `perfetto_trace.json.gz` (ui.perfetto.dev). A remote (gs://) workdir is traced into a
local temporary directory first and uploaded when the trace ends.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, ContextManager

import jax

from sw_zoo import storage

PROFILE_DIR = "profile"


def profile_dir(workdir: str, process_index: int, all_processes: bool) -> str:
  """Where a process's traces go: separate directories per process when every process traces,
  because two processes on one host would write the same `<host>.xplane.pb` names."""
  base = f"{workdir.rstrip('/')}/{PROFILE_DIR}"
  return f"{base}/process_{process_index}" if all_processes else base


class StepProfiler:
  """Starts the trace before the window's first step and ends it after its last.

  `step(n)` wraps step n (input fetch included, so input stalls show inside the step);
  `step_done(n + 1, state)` after it; `close()` when the loop ends, which finishes a trace the
  run stopped inside of. `pause` is a context-manager factory around starting and writing the
  trace (the loop passes the step timer's, so that time is not billed to training).
  """

  def __init__(self, cfg: Any, workdir: str, *, first_step: int,
               pause: Callable[[], ContextManager[None]] = contextlib.nullcontext,
               log: Callable[[str], None] = functools.partial(print, flush=True)):
    process = jax.process_index()
    self.enabled = cfg.steps > 0 and (cfg.all_processes or process == 0)
    self.start = first_step + cfg.skip_steps
    self.stop = self.start + cfg.steps
    self.dest = profile_dir(workdir, process, cfg.all_processes)
    self._pause, self._log = pause, log
    self._trace_dir: str | None = None  # set while a trace runs
    self._written = False

  @property
  def active(self) -> bool:
    return self._trace_dir is not None

  def step(self, step: int) -> ContextManager[Any]:
    if not self.enabled or not self.start <= step < self.stop:
      return contextlib.nullcontext()
    if not self.active:
      with self._pause():
        self._begin()
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def step_done(self, step: int, outputs: Any) -> None:
    """`step`: the number of steps done. After the window's last step, waits for `outputs` (so
    the window's device work is in the trace and billed to training) and writes the trace."""
    if self.active and step >= self.stop:
      jax.block_until_ready(outputs)
      with self._pause():
        self._finish(step)

  def close(self, step: int, outputs: Any = None) -> None:
    """When the loop ends (`step` steps done): writes a trace the run stopped inside of (after
    waiting for `outputs`), or says why there is none. Idempotent."""
    if self.active:
      jax.block_until_ready(outputs)
      self._finish(step)
    elif self.enabled and not self._written:
      self._log(f"No profile written: the run ended at step {step}, before the profile window "
                f"(steps {self.start}..{self.stop - 1}; config.profile.skip_steps counts from the "
                "step the run started or resumed at)")
    self.enabled = False

  def _begin(self) -> None:
    if storage.is_remote(self.dest):
      self._trace_dir = tempfile.mkdtemp(prefix="sw_zoo_profile_")
    else:
      os.makedirs(self.dest, exist_ok=True)
      self._trace_dir = self.dest
    # create_perfetto_trace: also perfetto_trace.json.gz, for ui.perfetto.dev without TensorBoard.
    jax.profiler.start_trace(self._trace_dir, create_perfetto_trace=True)

  def _finish(self, step: int) -> None:
    trace_dir, self._trace_dir = self._trace_dir, None
    jax.profiler.stop_trace()
    runs_dir = os.path.join(trace_dir, "plugins", "profile")
    run = max(os.listdir(runs_dir))  # the newest timestamped run: the one just written
    where = f"{self.dest}/plugins/profile/{run}"
    if trace_dir != self.dest:
      storage.upload_tree(os.path.join(runs_dir, run), where)
      shutil.rmtree(trace_dir, ignore_errors=True)
    self._written = True
    prefix = "" if jax.process_index() == 0 else f"[process {jax.process_index()}] "
    self._log(f"{prefix}Wrote a profile of steps {self.start}..{step - 1} to {where}. View it with "
              f"`tensorboard --logdir {self.dest}` (Profile tab; needs tensorboard-plugin-profile) "
              f"or `xprof --logdir={self.dest}`, or open {where}/perfetto_trace.json.gz in "
              "https://ui.perfetto.dev")
