"""A run sized to a time budget (`config.budget_minutes`): the number of steps is fixed from the
measured step and evaluation times, so the whole run, evaluations and the final one included,
ends within the budget with a complete learning-rate schedule.

    plan = budget.load(workdir)            # a resumed run keeps the plan it made
    total = budget.plan_steps(budget_s=600, elapsed_s=95, step_s=0.8, eval_s=6, eval_every=50,
                              steps_done=6, recompile_s=20)

How the trainer uses it: it starts with the config's schedule, runs `CALIBRATION_STEPS` steps with
the compiled step (their time, not the compile's, is the step time), runs one validation pass (a
real, logged evaluation whose time is the evaluation time), then fixes the total, rebuilds the
schedule for it and compiles the step once more. The warm-up is counted in steps, so the
calibration steps see the learning rate they would have seen under the final schedule whenever
they fall inside the warm-up. The plan is written to `<workdir>/budget.json` so a resumed run
uses the same total (and schedule) instead of planning again.
"""
from __future__ import annotations

import dataclasses
import json
import math

from sw_zoo import storage

PLAN_FILE = "budget.json"
CALIBRATION_STEPS = 5  # timed steps after the first one (which pays for warming caches)
SAFETY = 0.05  # share of the budget kept back for what is not measured (checkpoints, logging)


@dataclasses.dataclass
class Plan:
  budget_minutes: float
  total_steps: int
  step_s: float  # seconds per train step, measured
  eval_s: float  # seconds per validation pass, measured
  decided_at_step: int
  elapsed_s: float  # seconds since the run started when the plan was made

  def describe(self) -> str:
    return (f"budget {self.budget_minutes:g} min: {self.total_steps} steps ({self.step_s * 1000:.0f} ms/step, "
            f"{self.eval_s:.1f} s per evaluation, {self.elapsed_s:.0f} s spent before planning)")


def plan_steps(*, budget_s: float, elapsed_s: float, step_s: float, eval_s: float, eval_every: int,
               steps_done: int, recompile_s: float) -> int:
  """The total number of steps that fits: what is left of the budget after what has run, one
  more compile, the final evaluation and a safety margin, spent on steps that each also carry
  their share of the periodic evaluations. At least one more step than already done."""
  left = budget_s * (1.0 - SAFETY) - elapsed_s - recompile_s - eval_s
  per_step = step_s + eval_s / max(eval_every, 1)
  more = math.floor(left / per_step) if per_step > 0 else 0
  return steps_done + max(1, more)


def load(workdir: str) -> Plan | None:
  path = storage.join(workdir, PLAN_FILE)
  if not storage.exists(path):
    return None
  return Plan(**json.loads(storage.read_text(path)))


def save(workdir: str, plan: Plan) -> None:
  storage.write_text(storage.join(workdir, PLAN_FILE), json.dumps(dataclasses.asdict(plan), indent=2) + "\n")
