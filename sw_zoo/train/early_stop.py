"""Early stopping on a validation metric (`config.early_stop`), remembered across restarts.

    tracker = EarlyStop.load(workdir, metric="macro_f1", patience=3, min_delta=0.002)
    if tracker.update(step, val):          # after each periodic evaluation
      ...stop training; the run ends with the best evaluated checkpoint (keep_best's)

An evaluation improves when its metric beats the best so far by more than `min_delta`; after
`patience` evaluations in a row without one, training stops. The tracker is a small JSON file in
the workdir (`early_stop.json`), written after every evaluation, so a preempted run counts on
where it left off and a run that has stopped stays stopped when the same command runs again
(it goes straight to the final evaluation of its best checkpoint).
"""
from __future__ import annotations

import dataclasses
import json
import math

from sw_zoo import storage

STATE_FILE = "early_stop.json"
METRICS = ("micro_f1", "macro_f1")


@dataclasses.dataclass
class EarlyStop:
  path: str
  metric: str
  patience: int
  min_delta: float
  best: float = -math.inf
  best_step: int | None = None
  since_best: int = 0  # evaluations since the best one
  stopped_at: int | None = None  # the step training stopped at, once it has

  @classmethod
  def load(cls, workdir: str, *, metric: str, patience: int, min_delta: float) -> "EarlyStop":
    """The workdir's tracker (a fresh one when the run has none yet). A tracker saved for another
    metric or patience starts over: its counts do not mean the same thing."""
    if metric not in METRICS:
      raise ValueError(f"early_stop.metric {metric!r}: expected one of {METRICS}")
    path = storage.join(workdir, STATE_FILE)
    tracker = cls(path, metric, int(patience), float(min_delta))
    if storage.exists(path):
      saved = json.loads(storage.read_text(path))
      if saved.get("metric") == metric and saved.get("patience") == patience:
        tracker.best = float(saved["best"]) if saved.get("best") is not None else -math.inf
        tracker.best_step = saved.get("best_step")
        tracker.since_best = int(saved.get("since_best", 0))
        tracker.stopped_at = saved.get("stopped_at")
    return tracker

  @property
  def enabled(self) -> bool:
    return self.patience > 0

  def update(self, step: int, metrics: dict[str, float]) -> bool:
    """Records one evaluation at `step`; True when training should stop now."""
    value = float(metrics[self.metric])
    if value > self.best + self.min_delta:
      self.best, self.best_step, self.since_best = value, step, 0
    else:
      self.since_best += 1
    if self.since_best >= self.patience:
      self.stopped_at = step
    return self.stopped_at is not None

  def save(self) -> None:
    """Written by process 0 after each evaluation (every process reaches the same decision:
    the metrics are the same everywhere)."""
    storage.write_text(self.path, json.dumps({
        "metric": self.metric, "patience": self.patience, "min_delta": self.min_delta,
        "best": None if math.isinf(self.best) else self.best, "best_step": self.best_step,
        "since_best": self.since_best, "stopped_at": self.stopped_at}, indent=2) + "\n")

  def describe(self) -> str:
    return (f"no {self.metric} gain above {self.min_delta:g} in {self.patience} evaluations; best "
            f"{self.best:.4f} at step {self.best_step}")
