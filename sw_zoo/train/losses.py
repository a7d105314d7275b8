"""Multi-label losses. Hyperparameters come from the config, never from defaults hidden here."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def sigmoid_bce(logits: jnp.ndarray, labels: jnp.ndarray, tag_weights: jnp.ndarray | None = None) -> jnp.ndarray:
  """Per-image loss: binary cross-entropy summed over tags, shape [B].

  Summing (not averaging) over tags keeps the gradient per positive tag independent of the
  vocabulary size, so a learning rate tuned on 100 tags stays sensible on 10k. `tag_weights`
  ([T], mean 1) rescales each tag's term, e.g. up-weighting rare tags.
  """
  per_tag = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels)
  if tag_weights is not None:
    per_tag = per_tag * tag_weights
  return per_tag.sum(axis=-1)


LOSSES = {"bce": sigmoid_bce}
