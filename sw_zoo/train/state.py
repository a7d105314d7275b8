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


@flax.struct.dataclass
class StateBeforeLossParams:
  """The train state as checkpoints written before `loss_params` existed hold it (same fields,
  same names): such a checkpoint restores into this, then `upgrade` makes it a TrainState."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  skipped_steps: jax.Array | None = None

  @classmethod
  def of(cls, state: TrainState) -> "StateBeforeLossParams":
    return cls(step=state.step, params=state.params, opt_state=state.opt_state, rng=state.rng,
               ema_params=state.ema_params, skipped_steps=state.skipped_steps)

  def upgrade(self) -> TrainState:
    return TrainState(step=self.step, params=self.params, opt_state=self.opt_state, rng=self.rng,
                      ema_params=self.ema_params, skipped_steps=self.skipped_steps)
