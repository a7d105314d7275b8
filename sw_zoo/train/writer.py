"""Where training metrics go: the console, `metrics.jsonl` in the workdir (read by tools and
tests), and Weights & Biases (offline by default; online or disabled by config)."""
from __future__ import annotations

import json
import os
import secrets
from typing import Any

import jax

WANDB_MODES = ("offline", "online", "disabled")


class MetricWriter:
  def __init__(self, workdir: str, config: Any):
    self.active = jax.process_index() == 0  # one writer per run, not per host
    self._jsonl = None
    self._wandb = None
    if not self.active:
      return
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    mode = os.environ.get("WANDB_MODE") or config.wandb.mode
    if mode != "disabled":
      self._wandb = _init_wandb(workdir, config, mode)

  def write(self, step: int, scalars: dict[str, float], *, prefix: str = "") -> None:
    if not self.active:
      return
    record = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
    self._jsonl.flush()
    if self._wandb is not None:
      self._wandb.log(record, step=step)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._wandb is not None:
      self._wandb.finish()


def _init_wandb(workdir: str, config: Any, mode: str):
  import wandb  # imported lazily: it starts a service process and is not needed when disabled

  # One W&B run per workdir, resumed with it: the id lives next to the checkpoints.
  id_file = os.path.join(workdir, "wandb_run_id")
  if os.path.exists(id_file):
    run_id = open(id_file, encoding="utf-8").read().strip()
  else:
    run_id = secrets.token_hex(4)
    with open(id_file, "w", encoding="utf-8") as f:
      f.write(run_id)
  return wandb.init(
      project=config.wandb.project, entity=config.wandb.entity or None,
      name=config.wandb.name or os.path.basename(os.path.abspath(workdir)),
      group=config.wandb.group or None, tags=list(config.wandb.tags),
      config=config.to_dict(), dir=workdir, mode=mode, id=run_id, resume="allow")
