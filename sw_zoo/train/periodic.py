"""When the loop does its periodic work (log, evaluate, checkpoint), decided in one place, as
big_vision's `itstime`: an action with period `every` runs after every step that is a multiple
of it, and (when `last`) after the final step, whatever the period."""
from __future__ import annotations


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
  """Whether an action with period `every` steps (0: never, except the final step when `last`)
  runs after `step` (counted from 1) of a run of `total` steps."""
  if last and step == total:
    return True
  return every > 0 and step % every == 0 and step < total
