"""A run sized to a time budget (`config.budget_minutes`): the number of steps is fixed from the
measured step and evaluation times, so the whole run, evaluations and the final one included,
ends within the budget with a complete learning-rate schedule.

    plan = budget.load(workdir)            # a resumed run keeps the plan it made
    total = budget.plan_steps(budget_s=600, elapsed_s=95, step_s=0.8, eval_s=6, eval_every=50,
                              steps_done=6, recompile_s=20)

How the trainer uses it: it starts with the config's schedule, times `CALIBRATION_STEPS` steps with
the compiled step (their time, not the compile's, is the step time) and then more, up to
CALIBRATION_SHARE of the budget, runs one validation pass (a real, logged evaluation whose time is
the evaluation time), then fixes the total, rebuilds the schedule for it and compiles the step once
more. A third of the way to the planned end the total is revised once from the steps and
evaluations run since (a few seconds of timing are noisy on shared machines, and the first
evaluation pays for its compile), recompiling only when it moved by more than REPLAN_TOLERANCE;
the schedule is rebuilt for the new end, so the LR at the current step moves with it (a total 1.5x
longer, revised a third of the way in, raises it by ~18%). The first plan also caps the warm-up at a tenth of the planned run. Time spent before
`train_and_evaluate` starts (interpreter start, the CLI's recipe choice and Hub fetch) is not
counted. The warm-up is counted in steps, so the
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
# Then as many more as fill this share of the budget (at least CALIBRATION_STEPS more): the
# steady-state step time is what the plan needs.
CALIBRATION_SHARE = 0.02
SAFETY = 0.05  # share of the budget kept back for what is not measured (checkpoints, logging)


@dataclasses.dataclass
class Plan:
  budget_minutes: float
  total_steps: int
  step_s: float  # seconds per train step, measured
  eval_s: float  # seconds per validation pass, measured
  decided_at_step: int
  elapsed_s: float  # seconds since the run started when the plan was made
  # The plan is revised once, at this step, from the steps and evaluations run since it was made
  # (a few seconds of timing early in a run are noisy on shared machines; a third of the run is
  # not). 0: never (plans saved before this existed).
  replan_at: int = 0
  replanned: bool = False
  compile_s: float = 0.0  # the step's compile time (process 0's), charged once more at a revision
  # The warm-up (capped at a tenth of the planned run) and the freeze schedule's unfreeze step
  # the plan fixed, so a resume rebuilds the same schedule; -1: not recorded (older plans).
  warmup_steps: int = -1
  unfreeze_step: int = -1

  def describe(self) -> str:
    return (f"budget {self.budget_minutes:g} min{' (revised)' if self.replanned else ''}: {self.total_steps} steps ({self.step_s * 1000:.0f} ms/step, "
            f"{self.eval_s:.1f} s per evaluation, {self.elapsed_s:.0f} s spent before planning)")


def plan_steps(*, budget_s: float, elapsed_s: float, step_s: float, eval_s: float, eval_every: int = 0,
               steps_done: int, recompile_s: float, eval_count: int = 0) -> int:
  """The total number of steps that fits: what is left of the budget after what has run, one
  more compile, the final evaluation and a safety margin, spent on steps that each also carry
  their share of the periodic evaluations (one every `eval_every` steps), or, with `eval_count`,
  after that many evaluations in all. At least one more step than already done."""
  left = budget_s * (1.0 - SAFETY) - elapsed_s - recompile_s - eval_s
  if eval_count > 0:
    left -= (eval_count - 1) * eval_s
  per_step = step_s + (0.0 if eval_count > 0 else eval_s / max(eval_every, 1))
  more = math.floor(left / per_step) if per_step > 0 else 0
  return steps_done + max(1, more)


# A revised total this close to the planned one is not worth the recompile it costs.
REPLAN_TOLERANCE = 0.03


def replan_step(decided_at: int, total_steps: int) -> int:
  """Where the plan is revised: a third of the way from the plan to the planned end; 0 (never)
  when that is too few steps to time."""
  third = (total_steps - decided_at) // 3
  return decided_at + third if third >= 2 * CALIBRATION_STEPS else 0


@dataclasses.dataclass
class Since:
  """Time spent since the plan was made, split into what it was spent on, for the revision."""
  start: float
  step: int
  paused_s: float = 0.0  # evaluations and compiles: not training steps
  eval_s: list[float] = dataclasses.field(default_factory=list)

  def step_s(self, now: float, step: int) -> float:
    return (now - self.start - self.paused_s) / max(step - self.step, 1)


def more_calibration_steps(budget_s: float, first_step_s: float) -> int:
  """Steps to time after the first CALIBRATION_STEPS, from their (rough) time per step."""
  return max(CALIBRATION_STEPS, math.ceil(CALIBRATION_SHARE * budget_s / max(first_step_s, 1e-6)))


def load(workdir: str) -> Plan | None:
  path = storage.join(workdir, PLAN_FILE)
  if not storage.exists(path):
    return None
  return Plan(**json.loads(storage.read_text(path)))


def save(workdir: str, plan: Plan) -> None:
  storage.write_text(storage.join(workdir, PLAN_FILE), json.dumps(dataclasses.asdict(plan), indent=2) + "\n")
