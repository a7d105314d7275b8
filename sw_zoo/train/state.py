"""The train state: everything a resumed run needs besides the data iterator."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far.
  params: Any
  opt_state: Any
  # Base PRNG key as raw uint32 data (Orbax stores it like any array). Each step derives its own
  # key with fold_in(rng, step), so a resumed run draws exactly the randomness it would have.
  rng: jax.Array
