"""Orbax checkpoints holding the train state and the grain iterator state together.

Orbax writes each step into a temporary directory and renames it when complete, so a write torn
by a crash is never picked up as "latest". The state is saved asynchronously (the loop keeps
training while arrays are written); the iterator state is a small JSON per process.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, workdir: str, *, every_steps: int, max_to_keep: int, async_save: bool = True):
    self.every_steps = every_steps
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps, max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any, *, force: bool = False) -> bool:
    """Saves when `step` is a multiple of the interval (or `force`); returns whether a save
    started. (Orbax alone would also save the first step it sees, e.g. step 1.)"""
    if not force and step % self.every_steps:
      return False
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=grain.checkpoint.CheckpointSave(data_iterator)),
        force=True)

  def restore(self, abstract_state: Any, data_iterator: Any, step: int | None = None) -> tuple[int, Any] | None:
    """Restores (step, state) into `abstract_state`'s shapes and shardings and moves
    `data_iterator` to where it was; None when there is nothing to resume from."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    try:
      restored = self.manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"checkpoint {self.directory}/{step} does not match this config (different model, tag "
          f"count, optimizer or process count?). Resume with the config it was trained with, or "
          f"start a new run in another --workdir. Orbax said: {e}") from e
    return step, restored["state"]

  def restore_arrays(self, step: int | None = None) -> Any:
    """The saved train state as a tree of host arrays, without the data iterator: for tools
    (eval, export) that read a checkpoint without resuming training."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, so Orbax restores each array straight
  onto its devices (no host-side full copy on a pod)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
