"""ReduceLROnPlateau on a validation metric (`config.optim.plateau`), exact across restarts.

    plateau = Plateau.load(workdir, metric="micro_f1", factor=0.5, patience=2, min_delta=0.0,
                           min_scale=0.01)
    plateau.resume(step, optimizer.plateau_scale(state.opt_state))   # after init or restore
    if plateau.update(step, val):       # after each periodic evaluation: True when the LR drops
      state = state.replace(opt_state=optimizer.set_plateau_scale(state.opt_state, plateau.scale))

An evaluation improves when its metric beats the best so far by more than `min_delta`; after
`patience` evaluations in a row without one, the LR multiplier is multiplied by `factor` (never
below `min_scale`) and the count starts again (the best is kept, as torch's ReduceLROnPlateau).

The multiplier the steps use lives in the optimizer state (`optimizer.scale_by_plateau`), so each
checkpoint carries its own. The counters live in `<workdir>/plateau.json` as the list of
evaluations [(step, metric)] they came from, written by process 0 after every evaluation; on
resume only the evaluations up to the restored step are replayed, so a run resumed from a
checkpoint older than its last evaluation counts exactly as the uninterrupted run did.
"""
from __future__ import annotations

import dataclasses
import json
import math

from sw_zoo import storage
from sw_zoo.train.early_stop import METRICS

STATE_FILE = "plateau.json"


@dataclasses.dataclass
class Plateau:
  path: str
  metric: str
  factor: float
  patience: int
  min_delta: float
  min_scale: float
  history: list[tuple[int, float]] = dataclasses.field(default_factory=list)
  best: float = -math.inf
  since_best: int = 0  # evaluations since the best one or the last cut
  scale: float = 1.0  # the LR multiplier the next steps use

  @classmethod
  def load(cls, workdir: str, *, metric: str, factor: float, patience: int, min_delta: float,
           min_scale: float) -> "Plateau":
    """The workdir's tracker with its evaluation history (replayed by `resume`). A history saved
    for another metric is dropped: its values do not compare with this one's."""
    if metric not in METRICS:
      raise ValueError(f"optim.plateau.metric {metric!r}: expected one of {METRICS}")
    path = storage.join(workdir, STATE_FILE)
    tracker = cls(path, metric, float(factor), int(patience), float(min_delta), float(min_scale))
    if tracker.enabled and storage.exists(path):
      saved = json.loads(storage.read_text(path))
      if saved.get("metric") == metric:
        tracker.history = [(int(step), float(value)) for step, value in saved.get("history", [])]
    return tracker

  @property
  def enabled(self) -> bool:
    return self.factor > 0

  def resume(self, step: int, checkpoint_scale: float | None = None) -> str | None:
    """Counts from the evaluations up to `step` (the step the state was restored at, 0 when
    fresh); the multiplier is the checkpoint's when given. Returns a note when the replayed
    multiplier differs from the checkpoint's (settings changed, or plateau.json lost)."""
    self.history = [(s, v) for s, v in self.history if s <= step]
    self.best, self.since_best, self.scale = -math.inf, 0, 1.0
    for _, value in self.history:
      self._count(value)
    if checkpoint_scale is None or math.isclose(checkpoint_scale, self.scale, rel_tol=1e-6):
      return None
    note = (f"optim.plateau: the checkpoint's LR scale {checkpoint_scale:.4g} differs from "
            f"{self.scale:.4g} replayed from {self.path} ({len(self.history)} evaluations); "
            "keeping the checkpoint's")
    self.scale = float(checkpoint_scale)
    return note

  def _count(self, value: float) -> bool:
    if value > self.best + self.min_delta:
      self.best, self.since_best = value, 0
      return False
    self.since_best += 1
    if self.since_best < self.patience:
      return False
    self.since_best = 0
    new = max(self.scale * self.factor, self.min_scale)
    dropped = new < self.scale
    self.scale = new
    return dropped

  def update(self, step: int, metrics: dict[str, float]) -> bool:
    """Records one evaluation at `step`; True when the multiplier dropped."""
    value = float(metrics[self.metric])
    self.history.append((int(step), value))
    return self._count(value)

  def save(self) -> None:
    """Written by process 0 after each evaluation (every process decides the same: the metrics
    are the same everywhere)."""
    storage.write_text(self.path, json.dumps({
        "metric": self.metric, "factor": self.factor, "patience": self.patience,
        "min_delta": self.min_delta, "min_scale": self.min_scale, "scale": self.scale,
        "best": None if math.isinf(self.best) else self.best, "since_best": self.since_best,
        "history": [list(h) for h in self.history]}, indent=2) + "\n")

  def describe(self) -> str:
    return (f"no {self.metric} gain above {self.min_delta:g} in {self.patience} evaluations (best "
            f"{self.best:.4f}): LR scale now {self.scale:.4g}")
