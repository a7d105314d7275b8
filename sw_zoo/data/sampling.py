"""Which example each position of a process's training stream holds: one sampling, or stages.

The training stream is endless; batch k of a process holds stream positions [k B, (k + 1) B), B
its local batch size. Two samplings fill it:

* 'all': every example once per epoch, reshuffled every epoch (grain's shuffle).
* 'balanced': `balance.RepeatFactorSampler` over `balance.sampling_factors` (rare tags repeated,
  examples with only over-represented tags thinned).

A stage schedule (`config.data.stages`, parsed by `parse_stages`) switches sampling at fixed
steps: 'balanced:2epochs,all' is a balanced warm-up for two epochs' worth of steps, then all data
(the imbalanced fine-tuning write-up's multiple-stage training). Each stage's stream starts at
its own beginning (a fresh epoch) at the stage's first step. Every position maps to an example by
arithmetic alone, so a batch is a function of its index and the iterator state
`{'next_index': k}` resumes exactly in any stage.

Boundaries are steps counted from step 0 ('epochs' are converted with the run's steps per epoch,
the train split size / batch size, as every other duration in the config), so they do not move
when a time budget plans the run's total after it starts; a run may end before its last stage.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from sw_zoo.data import balance

SAMPLINGS = ("balanced", "all")
_LENGTH = re.compile(r"^(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>steps?|epochs?)$")


@dataclasses.dataclass(frozen=True)
class Stage:
  sampling: str  # one of SAMPLINGS
  steps: int = 0  # length in steps, or
  epochs: float = 0.0  # in epochs; both 0: the last stage, which runs to the end

  def num_steps(self, steps_per_epoch: int) -> int | None:
    if self.steps:
      return self.steps
    if self.epochs:
      return max(1, math.ceil(self.epochs * steps_per_epoch))
    return None


def parse_stages(spec: str) -> list[Stage]:
  """'balanced:2epochs,all' -> [Stage('balanced', epochs=2.0), Stage('all')]; '' -> [].

  Items are SAMPLING[:LENGTH], LENGTH = N steps or N epochs ('300steps', '1.5 epochs'); every
  stage but the last has one, the last has none (it runs to the end of training). ValueError
  saying which item is wrong and why.
  """
  if not isinstance(spec, str):
    raise ValueError(f"expected a string like 'balanced:2epochs,all', got {type(spec).__name__}")
  items = [item.strip() for item in spec.split(",")] if spec.strip() else []
  stages = []
  for i, item in enumerate(items):
    name, sep, length = (part.strip() for part in item.partition(":"))
    where = f"stage {i + 1} {item!r}"
    if name not in SAMPLINGS:
      raise ValueError(f"{where}: sampling {name!r} is not one of {SAMPLINGS}")
    last = i == len(items) - 1
    if last and sep:
      raise ValueError(f"{where} is the last stage, which runs to the end of training: drop its length")
    if not last and not sep:
      raise ValueError(f"{where} needs a length (e.g. '{name}:500steps' or '{name}:2epochs'); "
                       "only the last stage has none")
    if not sep:
      stages.append(Stage(name))
      continue
    match = _LENGTH.match(length)
    if not match:
      raise ValueError(f"{where}: length {length!r} is not N steps or N epochs (e.g. '500steps', '2epochs')")
    value = float(match["n"])
    if match["unit"].startswith("step"):
      if value != int(value) or value < 1:
        raise ValueError(f"{where}: a length in steps must be a whole number >= 1")
      stages.append(Stage(name, steps=int(value)))
    else:
      if not value > 0:
        raise ValueError(f"{where}: a length in epochs must be > 0")
      stages.append(Stage(name, epochs=value))
  return stages


def stage_steps(stages: Sequence[Stage], steps_per_epoch: int) -> list[tuple[str, int | None]]:
  """[(sampling, steps)] with the last stage's steps None: what `make_train_dataset` takes."""
  return [(s.sampling, s.num_steps(steps_per_epoch)) for s in stages]


def describe(stages: Sequence[tuple[str, int | None]]) -> str:
  """'balanced for steps 1-300, then all' for the log."""
  parts, start = [], 0
  for sampling, steps in stages:
    parts.append(f"{sampling} for steps {start + 1}-{start + steps}" if steps else
                 f"{sampling} from step {start + 1}")
    start += steps or 0
  return ", then ".join(parts)


class StagedIndices:
  """Stream position -> example index, from one endless index stream per stage.

  `streams[s]` is indexable by position within stage s; stage s covers stream positions
  [starts[s], starts[s + 1]) (the last one to infinity). A source for `grain.MapDataset.source`.
  """

  def __init__(self, streams: Sequence[Any], lengths: Sequence[int]):
    if len(lengths) != len(streams) - 1 or any(n < 1 for n in lengths):
      raise ValueError(f"need one positive length per stage but the last; got {list(lengths)} for "
                       f"{len(streams)} stages")
    self._streams = list(streams)
    self._starts = [0, *np.cumsum(lengths).tolist()]

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, position: int) -> int:
    position = int(position)
    if position < 0:
      raise IndexError(f"stream position must be non-negative, got {position}")
    stage = bisect.bisect_right(self._starts, position) - 1
    return int(self._streams[stage][position - self._starts[stage]])

  def __repr__(self) -> str:
    return f"StagedIndices(starts={self._starts}, streams={self._streams})"


def stage_seed(seed: int, stage: int) -> int:
  """Stage 0 keeps the run's seed (a schedule's first stage streams as that sampling alone
  would); later stages get their own."""
  return int(seed) if stage == 0 else int(np.random.SeedSequence([int(seed), stage]).generate_state(1)[0])


def stream_order(num_examples: int, stages: Sequence[tuple[str, int | None]], *, batch_size: int,
                 seed: int, factors: np.ndarray | None = None) -> Any:
  """The index source for `stages` ([(sampling, steps)], the last with steps None) over a
  process's `num_examples`: position p -> example index. One stage gives that stage's stream
  itself; 'balanced' stages draw with `factors` (`balance.sampling_factors`)."""
  if not stages or stages[-1][1] is not None:
    raise ValueError(f"stages {list(stages)}: need at least one, the last with steps None")
  streams = []
  for k, (name, _) in enumerate(stages):
    if name not in SAMPLINGS:
      raise ValueError(f"stage {k + 1}: sampling {name!r} is not one of {SAMPLINGS}")
    if name == "balanced":
      if factors is None:
        raise ValueError(f"stage {k + 1} is 'balanced' but no sampling factors were given")
      streams.append(balance.RepeatFactorSampler(factors, seed=stage_seed(seed, k)))
    else:
      # shuffle before repeat: grain reseeds the shuffle for every epoch of the repeat.
      streams.append(grain.MapDataset.range(num_examples).shuffle(seed=stage_seed(seed, k)).repeat())
  if len(streams) == 1:
    return streams[0]
  return StagedIndices(streams, [steps * batch_size for _, steps in stages[:-1]])
