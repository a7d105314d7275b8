"""Building blocks of normaliser-free networks (NF-ResNet / NFNet), in Flax linen.

Everything here follows timm's NFNet implementation (``timm/models/nfnet.py``,
``timm/layers/std_conv.py``, ``eca.py``, ``squeeze_excite.py``) closely enough that its
weights map one-to-one onto ours; where timm departs from the DeepMind reference we follow
timm and say so, because timm's ``eca_nfnet_l*`` weights are the parity target.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sw_zoo.models.conv_cpu import conv2d_dense, conv2d_gemm

Dtype = Any

# PyTorch's kaiming_normal_(mode='fan_in', nonlinearity='linear'), as timm initialises convs.
# The init scale hardly matters under weight standardisation, but its direction does.
conv_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def param_init(init: Callable, names: tuple[str | None, ...], logical_axes: bool) -> Callable:
  """``init``, wrapped with ``nn.with_logical_partitioning(init, names)`` when ``logical_axes``.

  Every param of the NF layers names its axes (see ``sw_zoo.models.partitioning.LOGICAL_AXES``):
  conv kernels ('conv_h', 'conv_w', 'conv_in', 'conv_out'), gains/biases ('conv_out',), ECA
  taps ('taps',), head ('embed', 'tags') / ('tags',). With ``logical_axes=False`` (the default
  everywhere) init returns plain arrays; with True, ``nn.LogicallyPartitioned`` boxes holding the
  same values (the wrapper does not touch the RNG).
  """
  return nn.with_logical_partitioning(init, names) if logical_axes else init


# --------------------------------------------------------------------------------------------
# Activations and their NF gains
# --------------------------------------------------------------------------------------------

def _gaussian_std(fn: Callable[[np.ndarray], np.ndarray]) -> float:
  """Std of fn(z) for z ~ N(0, 1), by a fixed composite trapezoid rule on [-12, 12].

  A uniform grid (rather than Gauss-Hermite) because hswish/relu have kinks, where
  polynomial quadrature converges slowly; h = 1e-4 puts the error near 1e-9.
  """
  z, h = np.linspace(-12.0, 12.0, 240_001, retstep=True)
  pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
  y = fn(z)
  trapezoid = lambda f: h * (f.sum() - 0.5 * (f[0] + f[-1]))  # np.trapezoid needs numpy >= 2
  mean = trapezoid(y * pdf)
  second = trapezoid(y * y * pdf)
  return float(math.sqrt(second - mean * mean))


def _hard_swish_np(z: np.ndarray) -> np.ndarray:
  return z * np.clip(z + 3.0, 0.0, 6.0) / 6.0


@dataclasses.dataclass(frozen=True)
class Activation:
  """A nonlinearity and its NF gain ``gamma = 1 / Std[fn(z)]``, z ~ N(0, 1).

  The gain is variance- (not second-moment-) preserving: every conv that consumes an
  activation is weight-standardised, so its output does not depend on the input's mean.
  """
  fn: Callable[[jax.Array], jax.Array]
  gamma: float


# relu/silu/gelu gains are DeepMind's published constants (deepmind-research/nfnets, copied by
# timm). They were estimated by sampling and differ from the exact values in the 4th digit
# (relu exact: 1.71286), but pretrained NFNets were trained with them, so they stay literal.
# No published constant exists for hard-swish, so it is computed (~1.8137).
ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(jax.nn.relu, 1.7139588594436646),
    "silu": Activation(jax.nn.silu, 1.7881293296813965),
    # PyTorch's nn.GELU (which the gain and timm weights belong to) is the exact erf form.
    "gelu": Activation(lambda x: jax.nn.gelu(x, approximate=False), 1.7015043497085571),
    "hswish": Activation(jax.nn.hard_swish, 1.0 / _gaussian_std(_hard_swish_np)),
}


def get_activation(name: str) -> Activation:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


# --------------------------------------------------------------------------------------------
# Scaled weight-standardised convolution
# --------------------------------------------------------------------------------------------

CONV_IMPLS = ("auto", "native", "einsum")


PADDINGS = ("symmetric", "same")


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
  """timm's symmetric padding rule (``timm.layers.padding.get_padding``).

  k=3: 1 for stride 1 and 2; k=1: 0. Symmetric padding (not TF 'SAME', which pads the
  bottom/right more for stride 2) is what timm's eca_nfnet_l* use.
  """
  return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def get_same_padding(size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
  """TF 'SAME' padding (low, high) of one spatial dim, as timm's ``pad_same``.

  The output has ceil(size / stride) positions; an odd total pad puts the extra pixel at the
  bottom/right. For stride 1 and odd kernels this equals the symmetric rule; for stride 2 on
  an even size a 3x3 conv pads (0, 1) instead of (1, 1). timm's ``ScaledStdConv2dSame``
  (dm_nfnet_f*) pads this way.
  """
  total = max((-(-size // stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
  return total // 2, total - total // 2


def resolve_conv_impl(conv_impl: str) -> str:
  """'auto' -> 'einsum' on the CPU backend, 'native' elsewhere.

  XLA:CPU lowers grouped convolutions (notably their backward pass) to slow generic loops;
  k*k shifted slices and one batched matmul over groups is an order of magnitude faster
  there. GPUs/TPUs have good grouped-conv kernels, so they keep the native op.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl={conv_impl!r}; expected one of {CONV_IMPLS}")
  if conv_impl == "auto":
    return "einsum" if jax.default_backend() == "cpu" else "native"
  return conv_impl


def conv2d(x: jax.Array, w: jax.Array, *, stride: int, padding: int | tuple[tuple[int, int], tuple[int, int]],
           groups: int, impl: str = "native") -> jax.Array:
  """NHWC x HWIO convolution with ``groups`` feature groups.

  ``padding``: an int (the same on every side) or ((top, bottom), (left, right)).

  ``impl='einsum'`` gives the same result as ``'native'`` (to float rounding) for grouped convs
  and 1x1 convs, computed by ``conv_cpu.conv2d_gemm``: im2col patches laid out group-major
  [G, B*Ho*Wo, k*k*Cin/G] contracted with one (batched) GEMM, with a hand-written backward
  (two GEMMs + col2im) instead of autodiff of pad/slice. On XLA:CPU (2 cores, eca_nfnet_l0 at
  batch 16 / 224 px) the native grouped conv's backward is 7-25x its forward and the native
  1x1 conv's backward 4-6x, while the GEMM forms stay near the expected 2x. Dense k x k convs
  (the stem, NF-ResNet) keep XLA's forward and input gradient, which are fast enough, and take
  their filter gradient from ``conv_cpu.conv2d_dense`` (im2col GEMMs over bands of output rows, in a scan).
  """
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  (pt, pb), (pl, pr) = padding
  kh, kw, cin_g, cout = w.shape
  if x.shape[-1] != cin_g * groups or cout % groups:
    raise ValueError(f"conv2d: input channels {x.shape[-1]} / kernel {w.shape} do not fit groups={groups}")
  # A dense conv on a few input channels (the RGB stem conv) keeps XLA's filter gradient: its
  # patches are too narrow for GEMMs to win (benchmarks/stem_convs.py: 1.14x the time with 3 input channels).
  if impl == "native" or kh != kw or (groups == 1 and kh > 1 and cin_g < 8):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=((pt, pb), (pl, pr)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  if groups == 1 and kh > 1:
    return conv2d_dense(x, w, stride, ((pt, pb), (pl, pr)))
  return conv2d_gemm(x, w, stride, ((pt, pb), (pl, pr)), groups)


def standardize_weight(kernel: jax.Array, gain: jax.Array, *, gamma: float, eps: float) -> jax.Array:
  """timm ScaledStdConv2d: per-output-channel (w - mean) / sqrt(var + eps) * gain * gamma / sqrt(fan_in).

  Statistics run over the fan-in axes (H, W, I) with the biased variance, as
  ``F.batch_norm(training=True)`` does in timm. (DeepMind's Haiku version instead uses
  ``rsqrt(max(var * fan_in, 1e-4))``; the difference only shows for near-constant filters.)
  """
  shape = kernel.shape
  fan_in = math.prod(shape[:-1])
  k2 = kernel.reshape(fan_in, shape[-1])
  # The fan-in means are written as (1/fan_in) . K matvecs rather than reductions over the
  # leading axes: XLA:CPU (YNNPACK fusions in jaxlib 0.10) runs those non-minor-axis reductions,
  # and above all their backward, 5-7x slower (final_conv's [1536, 2304] kernel: 78 -> 16 ms
  # fwd+bwd); a dot and its transpose are fast everywhere. HIGHEST keeps them exact f32 on
  # TPU/GPU too. Variance is two-pass (centred), like jnp.var.
  avg = jnp.full((fan_in,), 1.0 / fan_in, k2.dtype)
  mean = jnp.dot(avg, k2, precision=jax.lax.Precision.HIGHEST)
  centred = k2 - mean
  var = jnp.dot(avg, centred * centred, precision=jax.lax.Precision.HIGHEST)
  scale = jax.lax.rsqrt(var + eps) * (gain * (gamma / math.sqrt(fan_in)))
  return (centred * scale).reshape(shape)


class StdConv(nn.Module):
  """Scaled weight-standardised 2D conv (NF-ResNet paper; timm ``ScaledStdConv2d``).

  ``gamma`` is the NF gain of the activation feeding this conv, folded into the weight scale
  as timm does (cheaper than scaling activations; identical result). ``eps`` defaults to
  1e-5, the value timm's NFNet configs pass (``NfCfg.std_conv_eps``); the layer's own
  default in timm is 1e-6. Params: ``kernel`` [k, k, Cin/groups, Cout] (HWIO), ``gain``
  [Cout], ``bias`` [Cout]. Standardisation runs in float32 (the param dtype) before the
  weight is cast to the compute dtype. ``padding``: 'symmetric' (timm ``ScaledStdConv2d``) or
  'same' (TF SAME, timm ``ScaledStdConv2dSame``; see ``get_same_padding``).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  gamma: float = 1.0
  eps: float = 1e-5
  gain_init: float = 1.0
  use_bias: bool = True
  padding: str = "symmetric"
  conv_impl: str = "auto"
  logical_axes: bool = False        # box params with logical axis names (see param_init)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f"{self.name}: channels {cin}->{self.features} not divisible by groups={self.groups}")
    k = self.kernel_size
    init = lambda fn, *names: param_init(fn, names, self.logical_axes)
    kernel = self.param("kernel", init(conv_kernel_init, "conv_h", "conv_w", "conv_in", "conv_out"),
                        (k, k, cin // self.groups, self.features), self.param_dtype)
    gain = self.param("gain", init(nn.initializers.constant(self.gain_init), "conv_out"),
                      (self.features,), self.param_dtype)
    w = standardize_weight(kernel.astype(jnp.float32), gain.astype(jnp.float32),
                           gamma=self.gamma, eps=self.eps)
    if self.padding == "symmetric":
      padding = get_padding(k, self.stride)
    elif self.padding == "same":
      padding = tuple(get_same_padding(n, k, self.stride) for n in x.shape[1:3])
    else:
      raise ValueError(f"{self.name}: padding={self.padding!r}; expected one of {PADDINGS}")
    y = conv2d(x.astype(self.dtype), w.astype(self.dtype), stride=self.stride, padding=padding,
               groups=self.groups, impl=resolve_conv_impl(self.conv_impl))
    if self.use_bias:
      bias = self.param("bias", init(nn.initializers.zeros, "conv_out"), (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


# --------------------------------------------------------------------------------------------
# Channel attention
# --------------------------------------------------------------------------------------------

def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
  """ECA-Net's adaptive kernel size, as timm: odd t = int(|log2 C + b| / gamma), at least 3.

  256, 512 and 1536 channels all give 5.
  """
  t = int(abs(math.log2(channels) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


def _uniform_fan_in(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
  """U(+-1/sqrt(fan_in)) with fan_in = prod(shape): PyTorch Conv1d's default init."""
  bound = 1.0 / math.sqrt(math.prod(shape))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class ECA(nn.Module):
  """Efficient Channel Attention: a k-tap 1D conv (no bias, zero padding) along the channel
  axis of the spatially pooled features, then a sigmoid gate. Param: ``kernel`` [k]."""
  logical_axes: bool = False
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    k = eca_kernel_size(c)
    # PyTorch Conv1d's default init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(k)); timm's NFNet
    # init loop only touches Conv2d/Linear, so ECA keeps it.
    kernel = self.param("kernel", param_init(_uniform_fan_in, ("taps",), self.logical_axes), (k,),
                        self.param_dtype)
    # Pool in float32: a mean over thousands of bf16 values loses most of its precision.
    y = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    p = (k - 1) // 2
    yp = jnp.pad(y, ((0, 0), (p, p)))
    kernel = kernel.astype(jnp.float32)
    # Cross-correlation, like Conv1d: out[c] = sum_j kernel[j] * y[c + j - p].
    z = sum(kernel[j] * yp[:, j:j + c] for j in range(k))
    return x * jax.nn.sigmoid(z)[:, None, None, :].astype(x.dtype)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
  """timm's channel rounding: nearest multiple of ``divisor``, never more than 10% below v."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < round_limit * v:
    new_v += divisor
  return new_v


class SqueezeExcite(nn.Module):
  """timm SEModule: mean pool -> 1x1 (C -> rd) -> ReLU -> 1x1 (rd -> C) -> sigmoid gate.

  ``rd = make_divisible(C * rd_ratio, rd_divisor, round_limit=0)``; timm's NFNet-F uses
  rd_ratio 0.5 (nfnet_l0: 0.25). The inner ReLU is plain (no NF gain), as in timm/DeepMind.
  """
  rd_ratio: float = 0.5
  rd_divisor: int = 8
  logical_axes: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    rd = make_divisible(c * self.rd_ratio, self.rd_divisor, round_limit=0.0)
    # fc1/fc2 are 1x1 convs in timm: their [in, out] kernels take the conv axis names.
    dense = lambda n, name: nn.Dense(
        n, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        kernel_init=param_init(conv_kernel_init, ("conv_in", "conv_out"), self.logical_axes),
        bias_init=param_init(nn.initializers.zeros, ("conv_out",), self.logical_axes))
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    s = dense(c, "fc2")(jax.nn.relu(dense(rd, "fc1")(s)))
    return x * jax.nn.sigmoid(s.astype(jnp.float32))[:, None, None, :].astype(x.dtype)


ATTENTIONS: dict[str, type[nn.Module]] = {"eca": ECA, "se": SqueezeExcite}


# --------------------------------------------------------------------------------------------
# Stochastic depth
# --------------------------------------------------------------------------------------------

class DropPath(nn.Module):
  """Stochastic depth: zero the whole residual branch per sample with probability ``rate``
  and rescale survivors by 1/(1-rate) (timm DropPath, scale_by_keep=True).

  Draws from the ``'drop_path'`` RNG stream (head dropout uses ``'dropout'``).
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("drop_path"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
