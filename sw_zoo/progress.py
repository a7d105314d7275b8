"""The one progress bar every long-running piece of sw_zoo shows (tqdm, imported on first use so
`import sw_zoo...` stays light). Bars go to stderr and can be turned off per call."""
from __future__ import annotations

from typing import Any


def bar(total: int | None, desc: str | None = None, *, unit: str = "it", enabled: bool = True, **options: Any):
  """A tqdm bar (a no-op one when not `enabled`) that adapts to the terminal width."""
  from tqdm import tqdm

  return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **options)
