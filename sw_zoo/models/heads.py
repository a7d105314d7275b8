"""Output heads and the global pooling that feeds them, for any backbone's final feature map.

A model's heads are named in its config (`NFNetConfig.heads`, from `config.model.heads`):

  tags                   a linear layer: logits [B, T]                    (params head/kernel, head/bias)
  heteroscedastic_tags   the plain head's logits as the mean of input-dependent, correlated logit noise
                         (Collier et al., "Correlated Input-Dependent Label Noise in Large-Scale
                         Image Classification", CVPR 2021): low-rank + diagonal covariance,
                         Monte Carlo averaged sigmoid probabilities  (head/... + het/factors, het/diag)
  box                    one box per image, [x0, y0, x1, y1] in [0, 1] of the model input    (box_head/...)

Pooling (`NFNetConfig.pool`): 'mean' (global average, the NFNet default) or 'attention' (a learned
query per head attends over the positions of the final map, as in attention-pooled heads such as
e6tag's; the pooled vector keeps the same width, so embeddings and search keep working).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sw_zoo.models.layers import param_init

Dtype = Any

TAG_HEADS = ("tags", "heteroscedastic_tags")
HEADS = TAG_HEADS + ("box",)
POOLS = ("mean", "attention")


def check_heads(heads: tuple[str, ...]) -> None:
  """Exactly one tag head (tags are the product), plus optionally a box head; no repeats."""
  unknown = [h for h in heads if h not in HEADS]
  if unknown:
    raise ValueError(f"unknown head(s) {unknown}: expected names from {HEADS}")
  if len(set(heads)) != len(heads):
    raise ValueError(f"heads {heads} name a head twice")
  if sum(h in TAG_HEADS for h in heads) != 1:
    raise ValueError(f"heads {heads} must include exactly one of {TAG_HEADS}")


class AttentionPool(nn.Module):
  """Multi-head attention pooling with learned queries: for each of `num_heads` channel groups,
  softmax(keys . query / sqrt(d)) over the h*w positions weights the sum of that group's values.
  Keys and values are the feature map itself (no projections), so the pooled vector lives in the
  same space as mean pooling's and the module adds only num_heads x d query params. The queries
  start at zero: uniform attention, i.e. exactly mean pooling at init, so a pretrained backbone's
  features keep their meaning when a run switches pooling."""
  num_heads: int
  logical_axes: bool = False
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"attention pooling: {c} channels do not split into {self.num_heads} heads")
    d = c // self.num_heads
    query = self.param("query", param_init(nn.initializers.zeros, (None, "embed"), self.logical_axes),
                       (self.num_heads, d), self.param_dtype)
    values = x.astype(jnp.float32).reshape(b, h * w, self.num_heads, d)
    scores = jnp.einsum("bphd,hd->bph", values, query.astype(jnp.float32)) / math.sqrt(d)
    weights = jax.nn.softmax(scores, axis=1)
    return jnp.einsum("bph,bphd->bhd", weights, values).reshape(b, c)


def _dense(features: int, names: tuple[str | None, ...], *, std: float, logical_axes: bool, dtype: Dtype,
           param_dtype: Dtype, name: str, bias_init=nn.initializers.zeros) -> nn.Dense:
  kernel_init = nn.initializers.normal(std) if std > 0 else nn.initializers.zeros
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=param_init(kernel_init, names, logical_axes),
                  bias_init=param_init(bias_init, names[1:], logical_axes))


def mc_average_logits(samples: jax.Array) -> jax.Array:
  """logit(mean_s sigmoid(samples[s])) over the leading axis, computed in log space:
  log p = logsumexp_s log_sigmoid(u_s) - log S and log(1 - p) likewise, so the result is finite
  even when every sample saturates. A loss on these logits is the loss on the averaged
  probability, which is how the heteroscedastic head is trained and read."""
  log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(samples), axis=0)
  log_not_p = jax.nn.logsumexp(jax.nn.log_sigmoid(-samples), axis=0)
  return log_p - log_not_p  # the log S terms cancel


def draw_noise(key: jax.Array, num_samples: int, rows: int, rank: int, num_tags: int) -> tuple[jax.Array, jax.Array]:
  """Standard normal draws for the heteroscedastic head: [samples, rows, rank] and [samples, rows, tags]."""
  low_key, diag_key = jax.random.split(key)
  return (jax.random.normal(low_key, (num_samples, rows, rank), jnp.float32),
          jax.random.normal(diag_key, (num_samples, rows, num_tags), jnp.float32))


def eval_noise(num_samples: int, rank: int, num_tags: int) -> tuple[jax.Array, jax.Array]:
  """The one fixed set of draws every prediction uses (key 0, one row broadcast over the batch);
  the ONNX exporter stores exactly these as constants."""
  return draw_noise(jax.random.key(0), num_samples, 1, rank, num_tags)


def box_grid(height: int, width: int):
  """Centres of a height x width map's positions as (x, y) in [0, 1], row-major: [h * w, 2] numpy
  (the box head's soft-argmax coordinates; shared with the ONNX exporter)."""
  ys, xs = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
  return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


class HeteroscedasticTagHead(nn.Module):
  """Tag logits with input-dependent, correlated noise around the plain head's logits mu:
  u = mu + noise_scale * (V(h) e_R + d(h) * e_T), e ~ N(0, I), with V(h) [T, rank] and
  d(h) = softplus(...) [T] computed from the pooled features h; the output is
  logit(mean over `num_samples` draws of sigmoid(u / temperature)). The covariance V V^T + diag(d^2)
  lets one image's noise move groups of tags together (a missing `1girl` and its `solo`), which
  independent per-tag noise cannot.

  Training draws fresh noise per image from the 'heteroscedastic' RNG stream; evaluation uses one
  fixed set of draws (key 0, shape [samples, 1, ...]) for every image, so predictions are
  deterministic and independent of the batch. mu comes from the model's ordinary head (head/kernel, head/bias),
  so a plain run's head warm-starts it, and as noise_scale goes to 0 the output approaches
  mu / temperature.
  """
  rank: int
  num_samples: int
  temperature: float
  noise_scale: float
  logical_axes: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, mu: jax.Array, *, train: bool) -> jax.Array:
    common = dict(logical_axes=self.logical_axes, dtype=self.dtype, param_dtype=self.param_dtype)
    batch, num_tags = mu.shape
    mu = mu.astype(jnp.float32)
    # Small init: the run starts close to the plain head and learns how much noise each image has.
    factors = _dense(num_tags * self.rank, ("embed", None), std=0.01 / math.sqrt(self.rank),
                     name="factors", **common)(h).astype(jnp.float32)
    factors = factors.reshape(batch, num_tags, self.rank)
    diag = jax.nn.softplus(_dense(num_tags, ("embed", "tags"), std=0.01, name="diag",
                                  bias_init=nn.initializers.constant(-3.0), **common)(h).astype(jnp.float32))
    # Training: fresh draws per image. Evaluation: one fixed set of draws shared by every image, so
    # an image's prediction depends on nothing else in its batch (nor on the batch size, which
    # inference pads), and an exported graph can hold the draws as constants.
    if train:
      e_low, e_diag = draw_noise(self.make_rng("heteroscedastic"), self.num_samples, batch, self.rank, num_tags)
    else:
      e_low, e_diag = eval_noise(self.num_samples, self.rank, num_tags)
    noise = jnp.einsum("btr,sbr->sbt", factors, e_low) + diag[None] * e_diag
    samples = (mu[None] + self.noise_scale * noise) / self.temperature
    return mc_average_logits(samples)


class BoxHead(nn.Module):
  """One box per image from the final feature map: `num_maps` soft-argmax maps (a 1x1 conv and a
  softmax over positions) give where things are (expected x, y and their spread per map), which a
  global pool alone has largely averaged away; with the pooled features they feed a small MLP
  whose 4 sigmoid outputs are sorted into [x0, y0, x1, y1] in [0, 1] of the input square."""
  num_maps: int = 8
  hidden: int = 128
  logical_axes: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feature_map: jax.Array, pooled: jax.Array) -> jax.Array:
    common = dict(logical_axes=self.logical_axes, dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, _ = feature_map.shape
    logits = _dense(self.num_maps, ("embed", None), std=0.01, name="maps", **common)(feature_map)
    weights = jax.nn.softmax(logits.astype(jnp.float32).reshape(b, h * w, self.num_maps), axis=1)
    grid = jnp.asarray(box_grid(h, w))  # [P, 2] position centres in [0, 1]
    mean = jnp.einsum("bpm,pc->bmc", weights, grid)
    spread = jnp.sqrt(jnp.einsum("bpm,bpmc->bmc", weights, jnp.square(grid[None, :, None] - mean[:, None])) + 1e-6)
    located = jnp.concatenate([mean.reshape(b, -1), spread.reshape(b, -1), pooled.astype(jnp.float32)], axis=-1)
    hidden = nn.gelu(_dense(self.hidden, (None, None), std=0.02, name="fc1", **common)(located))
    # Starts as the centred half-size box rather than a point at the centre (sigmoid(0) = 0.5 for all four).
    start = nn.initializers.constant(jnp.asarray([-1.1, -1.1, 1.1, 1.1]))
    raw = jax.nn.sigmoid(_dense(4, (None, None), std=0.02, name="fc2", bias_init=start, **common)(hidden)
                         .astype(jnp.float32))
    return jnp.stack([jnp.minimum(raw[:, 0], raw[:, 2]), jnp.minimum(raw[:, 1], raw[:, 3]),
                      jnp.maximum(raw[:, 0], raw[:, 2]), jnp.maximum(raw[:, 1], raw[:, 3])], axis=-1)
