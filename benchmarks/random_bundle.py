"""Bundles of any model with random weights, for the speed benchmarks (speed does not depend on the
values). Params are drawn in numpy at the shapes `jax.eval_shape` gives (linen's init would run the
model op by op), scaled so activations stay O(1) and scores spread over (0, 1).

    from benchmarks.random_bundle import write_random_bundle
    path = write_random_bundle("/tmp/b", "l0_silu_eca", image_size=320, num_tags=9083)
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def booru_vocab(num_tags: int):
  """4 ratings, then general tags, then a fifth as many characters: the WD-tagger row layout."""
  from sw_zoo.data import vocab as vocab_lib

  ratings = [vocab_lib.Tag(n, vocab_lib.CATEGORY_RATING) for n in ("general", "sensitive", "questionable", "explicit")]
  characters = max(1, (num_tags - 4) // 5)
  general = num_tags - 4 - characters
  return vocab_lib.TagVocab(ratings + [vocab_lib.Tag(f"tag_{i}", vocab_lib.CATEGORY_GENERAL) for i in range(general)]
                            + [vocab_lib.Tag(f"character_{i}", vocab_lib.CATEGORY_CHARACTER) for i in range(characters)])


def random_params(spec, seed: int = 0):
  """The params tree of `spec`'s model, random: gains near 1, small biases, fan-in scaled weights."""
  import jax
  import jax.numpy as jnp

  model = spec.create(dtype="float32")
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key in ("gain", "skipinit_gain"):
      return 1.0 + np.float32(0.2) * noise
    if path[-1].key == "bias":
      return np.float32(0.1) * noise
    return noise / np.float32(np.sqrt(np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else leaf.shape[0]))

  return jax.tree_util.tree_map_with_path(draw, abstract)


def write_random_bundle(out: str, model_name: str, image_size: int, num_tags: int, *, threshold: float = 0.35) -> str:
  """A bundle of `model_name` at `image_size` with `num_tags` outputs and random params."""
  from sw_zoo.inference import bundle as bundle_lib

  tags = booru_vocab(num_tags)
  spec = bundle_lib.ModelSpec(name=model_name, num_tags=len(tags), dtype="float32")
  return bundle_lib.write_bundle(out, params=random_params(spec), spec=spec, image_size=image_size, tags=tags,
                                 thresholds=bundle_lib.threshold_config(threshold))
