"""Where training metrics go: the console, `metrics.jsonl` in the workdir (read by tools and
tests), and Weights & Biases (offline by default; online or disabled by config): the config,
every scalar (loss, lr, images/s, TFLOP/s, MFU, validation F1) and a table of sample
validation predictions at each evaluation."""
from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from sw_zoo import run_dir, storage

WANDB_MODES = ("offline", "online", "disabled")
# Tags shown per image in the prediction table: enough to judge a tagger at a glance.
MAX_TAGS_SHOWN = 25


class MetricWriter:
  def __init__(self, workdir: str, config: Any):
    self.active = jax.process_index() == 0  # one writer per run, not per host
    self._jsonl = None
    self._wandb = None
    if not self.active:
      return
    # Appending keeps a resumed run's history in one file. Object stores cannot append: a gs://
    # workdir's file is kept in the local mirror and uploaded whole after each write (a few KB).
    self._url = storage.join(workdir, run_dir.METRICS_FILE) if storage.is_remote(workdir) else None
    path = storage.mirror_path(self._url) if self._url else os.path.join(workdir, run_dir.METRICS_FILE)
    if self._url:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      storage.write_bytes(path, storage.read_bytes(self._url) if storage.exists(self._url) else b"")
    self._jsonl = open(path, "a", encoding="utf-8")
    mode = os.environ.get("WANDB_MODE") or config.wandb.mode
    if mode != "disabled":
      self._wandb = _init_wandb(workdir, config, mode)

  @property
  def wants_predictions(self) -> bool:
    """Sample predictions only go to W&B; without it the loop skips computing them."""
    return self._wandb is not None

  def write(self, step: int, scalars: dict[str, float], *, prefix: str = "") -> None:
    if not self.active:
      return
    record = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
    self._jsonl.flush()
    if self._url:
      storage.write_bytes(self._url, storage.read_bytes(self._jsonl.name))
    if self._wandb is not None:
      self._wandb.log(record, step=step)

  def log_predictions(self, step: int, samples: dict[str, np.ndarray], tag_names: Sequence[str], *,
                      threshold: float) -> None:
    """A W&B table: each image with its predicted tags (score >= threshold, best first), its
    true tags, and the misses / false alarms, so a run's dashboard shows what the F1 means."""
    if self._wandb is None:
      return
    import wandb

    table = wandb.Table(columns=["image", "predicted", "true", "missed", "extra"])
    for image, labels, probs in zip(samples["image"], samples["labels"], samples["probs"]):
      predicted = [i for i in np.argsort(-probs) if probs[i] >= threshold][:MAX_TAGS_SHOWN]
      true = set(np.flatnonzero(labels > 0.5).tolist())
      table.add_data(
          wandb.Image(np.asarray(image)),
          ", ".join(f"{tag_names[i]} {probs[i]:.2f}" for i in predicted),
          ", ".join(tag_names[i] for i in sorted(true)),
          ", ".join(tag_names[i] for i in sorted(true - set(predicted))),
          ", ".join(tag_names[i] for i in predicted if i not in true))
    self._wandb.log({"val/predictions": table}, step=step)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._wandb is not None:
      self._wandb.finish()


def _init_wandb(workdir: str, config: Any, mode: str):
  import wandb  # imported lazily: it starts a service process and is not needed when disabled

  # One W&B run per workdir, resumed with it: the id lives next to the checkpoints.
  id_file = epath.Path(workdir) / "wandb_run_id"
  if id_file.exists():
    run_id = id_file.read_text().strip()
  else:
    run_id = secrets.token_hex(4)
    id_file.write_text(run_id)
  # W&B writes its local files with plain file I/O: a remote (gs://) workdir gets a local dir.
  local_dir = workdir if "://" not in workdir else tempfile.mkdtemp(prefix="sw_zoo_wandb_")
  return wandb.init(
      project=config.wandb.project, entity=config.wandb.entity or None,
      name=config.wandb.name or os.path.basename(os.path.abspath(workdir.rstrip("/"))),
      group=config.wandb.group or None, tags=list(config.wandb.tags),
      config=config.to_dict(), dir=local_dir, mode=mode, id=run_id, resume="allow")
