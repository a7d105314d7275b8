"""Multi-label losses. Hyperparameters come from the config, never from defaults hidden here."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def sigmoid_bce(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Per-image loss: binary cross-entropy summed over tags, shape [B].

  Summing (not averaging) over tags keeps the gradient per positive tag independent of the
  vocabulary size, so a learning rate tuned on 100 tags stays sensible on 10k.
  """
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels).sum(axis=-1)


LOSSES = {"bce": sigmoid_bce}
