"""The train state: everything a resumed run needs besides the data iterator."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied (or skipped as non-finite) so far.
  params: Any
  opt_state: Any
  # Base PRNG key as raw uint32 data (Orbax stores it like any array). Each step derives its own
  # key with fold_in(rng, step), so a resumed run draws exactly the randomness it would have.
  rng: jax.Array
  # Exponential moving average of params (None when config.optim.ema_decay is 0).
  ema_params: Any = None
  # int32 scalar: steps whose loss or gradients were NaN/Inf, so their update was skipped.
  skipped_steps: jax.Array | None = None
  # The loss's own trainable params (config.loss.robust='adaptive': per-tag alpha and scale
  # latents) and their optimizer state; None for every other loss.
  loss_params: Any = None
  loss_opt_state: Any = None

  def eval_params(self) -> Any:
    """The weights to evaluate and export: the EMA when there is one."""
    return self.params if self.ema_params is None else self.ema_params
