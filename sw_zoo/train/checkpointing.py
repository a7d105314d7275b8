"""Orbax checkpoints holding the train state and the grain iterator state together.

Orbax writes each step into a temporary directory and renames it when complete, so a write torn
by a crash is never picked up as "latest". The state is saved asynchronously (the loop keeps
training while arrays are written); the iterator state is a small JSON per process.

Multi-host: every process calls save and restore with the same step; each writes its own array
shards and its own iterator state (process_<i>-of-<n>.json), and Orbax commits the step once all
are done, so the directory must be one all processes see (GCS, NFS, or one machine's disk). A run
resumes with the process count it was saved with (each process's data iterator is restored).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from sw_zoo import run_dir, storage
from sw_zoo.train.state import StateBeforeLossParams


class _SkipUnrankedSaveWarning(logging.Filter):
  """Periodic saves carry no metrics by design (only evaluated steps are ranked for keep-best);
  Orbax warns about each of them, which would bury the training log."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


_UNRANKED_FILTER = _SkipUnrankedSaveWarning()


class Checkpointer:
  def __init__(self, workdir: str, *, every_steps: int, max_to_keep: int, async_save: bool = True,
               keep_best: int = 0, best_metric: str = "micro_f1"):
    """Keeps the latest `max_to_keep` steps plus the `keep_best` steps with the highest
    `best_metric` among those saved with metrics (see `save`)."""
    self.every_steps = every_steps
    self.best_metric = best_metric
    if keep_best:
      logging.getLogger("absl").addFilter(_UNRANKED_FILTER)
    self.directory = run_dir.checkpoints_dir(workdir)
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps, enable_async_checkpointing=async_save, create=True,
            preservation_policy=_preservation(max_to_keep, keep_best, best_metric),
            # Orbax writes a step's metrics to disk only when best_fn is set; they must be on disk
            # for keep-best to survive a restart.
            best_fn=(lambda metrics: metrics[best_metric]) if keep_best else None, best_mode="max"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any, *, metrics: dict[str, float] | None = None,
           force: bool = False) -> bool:
    """Saves when `step` is a multiple of the interval (or `force`); returns whether a save
    started. (Orbax alone would also save the first step it sees, e.g. step 1.) `metrics`
    (validation scores at this step) rank the checkpoint for keep-best."""
    if not force and step % self.every_steps:
      return False
    with self._failures(step):
      if step in self.manager.all_steps():
        # Already saved: a stop agreed right after a periodic save asks again for the same step,
        # which Orbax would refuse with StepAlreadyExistsError.
        return False
      return self.manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(data_iterator)),
          metrics=dict(metrics) if metrics else None, force=True)

  @contextlib.contextmanager
  def _failures(self, step: int | None):
    """A failed write (a store gone away mid-save: an async save's error surfaces at the next
    save or wait) becomes one error naming the checkpoint directory. The step being written is
    never committed (Orbax marks a step complete last), so the previous one still restores."""
    try:
      yield
    except (KeyboardInterrupt, SystemExit, ValueError):
      raise
    except Exception as e:
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      which = f"step {step}" if step is not None else "the last checkpoint"
      raise OSError(f"{self.directory}: writing {which} failed ({type(e).__name__}: {first}); the step is not "
                    "committed, so rerunning resumes from the previous complete checkpoint") from e

  def best_step(self) -> int | None:
    """The kept step with the highest `best_metric` (None when no kept checkpoint has one)."""
    scored = []
    for step in self.manager.all_steps():
      metrics = self.manager.metrics(step)
      if metrics and self.best_metric in metrics:
        scored.append((float(metrics[self.best_metric]), step))
    return max(scored)[1] if scored else None

  def restore(self, abstract_state: Any, data_iterator: Any, step: int | None = None) -> tuple[int, Any] | None:
    """Restores (step, state) into `abstract_state`'s shapes and shardings and moves
    `data_iterator` to where it was; None when there is nothing to resume from."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    # A state without loss params may come from a checkpoint written before the field existed.
    legacy = self._written_before_loss_params(step) and abstract_state.loss_params is None \
        and abstract_state.loss_opt_state is None
    item = StateBeforeLossParams.of(abstract_state) if legacy else abstract_state
    try:
      restored = self.manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(item),
                                  data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except (ValueError, KeyError, TypeError) as e:
      # Orbax's message dumps both trees; its first line says what differs.
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise ValueError(
          f"checkpoint {self.directory}/{step} does not match this config (different model, tag "
          f"count, optimizer or process count?). Resume with the config it was trained with, or "
          f"start a new run in another --workdir. Orbax said: {first}") from e
    return step, restored["state"].upgrade() if legacy else restored["state"]

  def _written_before_loss_params(self, step: int) -> bool:
    """Whether the step's saved state has no `loss_params` entry (older sw_zoo)."""
    path = storage.join(str(self.directory), str(step), "state", "_METADATA")
    try:
      tree = json.loads(storage.read_text(path)).get("tree_metadata") or {}
    except (OSError, ValueError, AttributeError):
      return False  # unreadable here: the plain restore reports what is wrong
    return bool(tree) and not any(key.startswith("('loss_params'") for key in tree)

  def restore_arrays(self, step: int | None = None) -> Any:
    """The saved train state as a tree of host (numpy) arrays, without the data iterator: for
    tools (eval, export, tests) that read a checkpoint without resuming training."""
    self.manager.wait_until_finished()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return run_dir.read_state_arrays(os.path.join(self.directory, str(step)))

  def wait(self):
    with self._failures(None):
      self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, so Orbax restores each array straight
  onto its devices (no host-side full copy on a pod)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _preservation(max_to_keep: int, keep_best: int, metric: str):
  policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
  if keep_best:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[metric], reverse=False, n=keep_best,
        keep_checkpoints_without_metrics=False))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)
