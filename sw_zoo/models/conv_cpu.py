"""Convolutions as matmuls with an explicit backward pass, for XLA:CPU.

XLA:CPU runs a convolution's *forward* through a reasonably fast Eigen kernel, but its
backward convolutions (backprop-filter, and backprop-input for strided or grouped convs) fall
to much slower paths, and the grouped forward is slow too. Everything here is written as
im2col + ``dot_general`` instead, whose forward *and* backward are plain GEMMs on CPU:

  * forward: patches[N, G, k*k*Cin/G] (k*k strided slices of the padded input; for 1x1
    stride-1 convs just a reshape) contracted with the kernel laid out as [G, k*k*Cin/G, Cout/G];
  * backward (``jax.custom_vjp``): dW = patches^T . dY (one GEMM; patches are rebuilt from the
    saved input rather than stored), dPatches = dY . W^T (one GEMM), then col2im: each of the
    k*k taps of dPatches is scattered back onto the padded input grid with an (interior, for
    stride > 1) ``lax.pad`` and the k*k pads are summed in one fused loop, then cropped.

Numerics equal the native ``lax.conv_general_dilated`` up to float summation order (tested to
1e-5 in tests/test_models.py, including strides, groups and uneven TF-SAME padding).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]


def _out_size(n: int, k: int, stride: int, lo: int, hi: int) -> int:
  return (n + lo + hi - k) // stride + 1


def _group_major(x: jax.Array, groups: int) -> jax.Array:
  """[B, H, W, G*C] -> [G, B, H, W, C] (a bitcast when G == 1)."""
  b, h, w, c = x.shape
  return x.reshape(b, h, w, groups, c // groups).transpose(3, 0, 1, 2, 4)


def _patches(xg: jax.Array, k: int, stride: int, padding: Padding) -> jax.Array:
  """Group-major im2col: xg [G, B, H, W, C] -> [G, B*Ho*Wo, k*k*C], tap (dy, dx) major."""
  g, b, h, w, c = xg.shape
  (pt, pb), (pl, pr) = padding
  ho, wo = _out_size(h, k, stride, pt, pb), _out_size(w, k, stride, pl, pr)
  if any((pt, pb, pl, pr)):
    xg = jnp.pad(xg, ((0, 0), (0, 0), (pt, pb), (pl, pr), (0, 0)))
  if k == 1 and stride == 1:
    return xg.reshape(g, b * h * w, c)
  taps = [
      jax.lax.slice(xg, (0, 0, dy, dx, 0), (g, b, dy + stride * (ho - 1) + 1, dx + stride * (wo - 1) + 1, c),
                    (1, 1, stride, stride, 1))
      for dy in range(k) for dx in range(k)
  ]
  p = taps[0] if len(taps) == 1 else jnp.stack(taps, axis=4)
  return p.reshape(g, b * ho * wo, k * k * c)


def _col2im(dp: jax.Array, xg_shape: tuple[int, ...], out_hw: tuple[int, int], k: int, stride: int,
            padding: Padding) -> jax.Array:
  """Adjoint of ``_patches``: dp [G, B*Ho*Wo, k*k*C] -> dxg [G, B, H, W, C]."""
  g, b, h, w, c = xg_shape
  ho, wo = out_hw
  (pt, pb), (pl, pr) = padding
  hp, wp = h + pt + pb, w + pl + pr
  if k == 1 and stride == 1 and not any((pt, pb, pl, pr)):
    return dp.reshape(xg_shape)
  dp = dp.reshape(g, b, ho, wo, k * k, c)
  total = None
  for t in range(k * k):
    dy, dx = divmod(t, k)
    # Tap (dy, dx) read xp[dy + stride*i, dx + stride*j]: put it back there, zeros elsewhere.
    placed = jax.lax.pad(dp[:, :, :, :, t, :], jnp.zeros((), dp.dtype),
                         ((0, 0, 0), (0, 0, 0),
                          (dy, hp - (dy + stride * (ho - 1) + 1), stride - 1),
                          (dx, wp - (dx + stride * (wo - 1) + 1), stride - 1), (0, 0, 0)))
    total = placed if total is None else total + placed
  return total[:, :, pt:pt + h, pl:pl + w, :]


def _kernel_groups(w: jax.Array, groups: int) -> jax.Array:
  """HWIO [k, k, Cin/G, Cout] -> [G, k*k*Cin/G, Cout/G] (XLA's feature_group_count layout)."""
  kh, kw, cin_g, cout = w.shape
  return (w.reshape(kh * kw, cin_g, groups, cout // groups)
          .transpose(2, 0, 1, 3).reshape(groups, kh * kw * cin_g, cout // groups))


def _kernel_ungroup(wg: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  kh, kw, cin_g, cout = shape
  groups = wg.shape[0]
  return (wg.reshape(groups, kh * kw, cin_g, cout // groups)
          .transpose(1, 2, 0, 3).reshape(kh, kw, cin_g, cout))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_gemm(x: jax.Array, w: jax.Array, stride: int, padding: Padding, groups: int) -> jax.Array:
  """NHWC x HWIO conv (square kernel), ``feature_group_count=groups``, as im2col GEMMs."""
  return _fwd(x, w, stride, padding, groups)[0]


def _fwd(x, w, stride, padding, groups):
  k = w.shape[0]
  b, h, wd, _ = x.shape
  (pt, pb), (pl, pr) = padding
  ho, wo = _out_size(h, k, stride, pt, pb), _out_size(wd, k, stride, pl, pr)
  p = _patches(_group_major(x, groups), k, stride, padding)            # [G, N, K]
  out = jnp.einsum("gnk,gko->gno", p, _kernel_groups(w, groups))       # [G, N, O]
  out = out.reshape(groups, b, ho, wo, -1).transpose(1, 2, 3, 0, 4).reshape(b, ho, wo, w.shape[-1])
  return out, (x, w)


def _bwd(stride, padding, groups, res, g):
  x, w = res
  k = w.shape[0]
  b, ho, wo, cout = g.shape
  gg = _group_major(g, groups).reshape(groups, b * ho * wo, cout // groups)   # [G, N, O]
  wg = _kernel_groups(w, groups)                                               # [G, K, O]
  xg = _group_major(x, groups)
  p = _patches(xg, k, stride, padding)  # recomputed: cheaper than keeping k*k copies of x
  # dW = P^T dY contracts over N, the major axis of both: XLA:CPU copies one operand into a
  # transposed layout first, and copies the operand written first. Put the narrower one first.
  if p.shape[-1] <= gg.shape[-1]:
    dwg = jnp.einsum("gnk,gno->gko", p, gg)
  else:
    dwg = jnp.einsum("gno,gnk->gok", gg, p).transpose(0, 2, 1)
  dp = jnp.einsum("gno,gko->gnk", gg, wg)
  dxg = _col2im(dp, xg.shape, (ho, wo), k, stride, padding)
  dx = dxg.transpose(1, 2, 3, 0, 4).reshape(x.shape)
  return dx.astype(x.dtype), _kernel_ungroup(dwg, w.shape).astype(w.dtype)


conv2d_gemm.defvjp(_fwd, _bwd)


# ---- Dense k x k convs (the stem, NF-ResNet) ---------------------------------------------------
# XLA:CPU's forward and input-gradient convolutions are fast enough here, but its filter
# gradient (a convolution with batch and features swapped) ran at ~45 GFLOP/s on the stem's
# 112 px layers. One im2col GEMM over the whole batch is no better: the patches (9x the input,
# 231 MB for 32 channels at batch 16) go through memory at ~8 GB/s. Built per band of output rows
# inside a scan, the patches stay in cache and the filter gradient becomes a chain of small GEMMs.
# Bands split the height, not the batch, so a batch sharded over devices stays sharded (a scan
# over batch slices made XLA all-gather the batch).
_FILTER_GRAD_PATCH_BYTES = 8 << 20  # patches per scan step (whole batch); L2/L3-sized


def _native_conv(x, w, stride, padding):
  return jax.lax.conv_general_dilated(x, w, window_strides=(stride, stride), padding=padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_dense(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """NHWC x HWIO dense conv: XLA's convolution forward and input gradient, the filter gradient
  as im2col GEMMs over bands of output rows (see above)."""
  return _native_conv(x, w, stride, padding)


def _dense_fwd(x, w, stride, padding):
  return _native_conv(x, w, stride, padding), (x, w)


def _dense_bwd(stride, padding, res, g):
  x, w = res
  _, input_vjp = jax.vjp(lambda x_: _native_conv(x_, w, stride, padding), x)
  (dx,) = input_vjp(g)
  k, _, cin, cout = w.shape
  b, ho, wo, _ = g.shape
  per_row = b * wo * k * k * cin * x.dtype.itemsize  # patch bytes of one output row, whole batch
  band = max((r for r in range(1, ho + 1) if ho % r == 0 and r * per_row <= _FILTER_GRAD_PATCH_BYTES), default=1)
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  rows_in = (band - 1) * stride + k  # padded input rows one band of output rows reads

  def accumulate(total, j):
    slab = jax.lax.dynamic_slice_in_dim(xp, j * band * stride, rows_in, axis=1)
    p = _patches(slab[None], k, stride, ((0, 0), (0, 0)))[0]             # [B*band*Wo, k*k*Cin]
    gb = jax.lax.dynamic_slice_in_dim(g, j * band, band, axis=1).reshape(-1, cout)
    return total + jnp.einsum("nk,no->ko", p, gb, preferred_element_type=jnp.float32), None

  dw, _ = jax.lax.scan(accumulate, jnp.zeros((k * k * cin, cout), jnp.float32), jnp.arange(ho // band))
  return dx.astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


conv2d_dense.defvjp(_dense_fwd, _dense_bwd)
