"""Barron's general and adaptive robust loss ("A General and Adaptive Robust Loss Function",
CVPR 2019), written from the paper's formulas.

    rho(x, alpha, c) = |alpha - 2| / alpha * (((x / c)^2 / |alpha - 2| + 1)^(alpha / 2) - 1)

One shape parameter alpha spans L2 (2), Charbonnier / pseudo-Huber (1), Cauchy (0),
Geman-McClure (-2) and Welsch (-inf); the scale c > 0 sets the width of the quadratic bowl
(rho ~ 0.5 (x / c)^2 near 0 for every alpha). e6tag wrapped its focal loss in the adaptive loss
(its write-up gives no details; one reading is x = the per-tag focal loss, alpha and c learned).

Training uses them through `config.loss.robust` ('general': rho with a fixed alpha and c;
'adaptive': `adaptive_nll` with alpha and c learned per tag), see `sw_zoo.train.losses.make_loss`.

Training alpha and c: minimise `adaptive_nll`, not `adaptive_rho`. rho alone falls as alpha falls
and as c grows, so gradient descent on it would just push alpha to the bottom of its range and c
to infinity; the NLL's log c + log Z(alpha) terms are what balance them, as the paper explains.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# log Z(alpha) quadrature (see `log_partition`): the integrand is an even analytic function of s
# that has fallen below 1e-16 of its peak by s = 9 for every alpha in [0, 2], so the trapezoid
# rule converges geometrically; 256 nodes agree with scipy.integrate.quad to ~1e-15 in float64
# (128 would give ~2e-7, 64 ~6e-4).
_NODES = 256
_S_MAX = 9.0
_LOG_TRAPEZOID_WEIGHTS = np.log(_S_MAX / (_NODES - 1) * np.r_[0.5, np.ones(_NODES - 2), 0.5])


def _exprel_series(u: jax.Array) -> jax.Array:
  """expm1(u) / u for |u| < 0.1 = sum_k u^k / (k+1)! to u^10: the first term left out is
  < 0.1^11 / 12! ~ 2e-20, so this is exact to float64 rounding, and so are its derivatives
  (expm1(u) / u is 0/0 at 0 and its derivative cancels catastrophically near it)."""
  series = 1.0
  for k in range(11, 1, -1):
    series = 1 + u / k * series
  return series


def _exprel(u: jax.Array) -> jax.Array:
  """expm1(u) / u, = 1 at u = 0."""
  small = jnp.abs(u) < 0.1
  safe = jnp.where(small, 1.0, u)  # keeps the unused branch's gradient finite
  return jnp.where(small, _exprel_series(u), jnp.expm1(safe) / safe)


def _expm1_over(a: jax.Array, h: jax.Array) -> jax.Array:
  """expm1(a h) / a, = h at a = 0. Away from 0 the division comes last (not h * exprel(a h)):
  one rounding fewer keeps rho monotone in |x| and below its bound in float32."""
  u = a * h
  small = jnp.abs(u) < 0.1
  safe = jnp.where(small, 1.0, a)
  return jnp.where(small, h * _exprel_series(u), jnp.expm1(safe * h) / safe)


def _float(*args) -> tuple[jax.Array, ...]:
  dtype = jnp.promote_types(jnp.result_type(*args), jnp.float32)
  return tuple(jnp.asarray(a, dtype) for a in args)


def rho(x: jax.Array, alpha: jax.Array | float, scale: jax.Array | float = 1.0) -> jax.Array:
  """Barron's rho, elementwise over broadcast (x, alpha, scale); scale > 0 (not checked: traced).

  Computed as |alpha-2| * expm1(alpha L/2) / alpha, L = log1p((x/c)^2 / |alpha-2|), with
  expm1(alpha L/2) / alpha -> L/2 by its series near alpha L = 0: exact at alpha = 0 (Cauchy)
  without a special case, and the alpha-gradient is the true one there. alpha = 2 (0/0 in the
  formula) and alpha = +-inf take their closed forms. Gradients in x and c are finite everywhere,
  x = 0 included. The alpha-gradient is returned as 0 at alpha = 2, where the true one is
  unbounded (it grows like -log|alpha - 2|), and at +-inf.
  """
  x, alpha, scale = _float(x, alpha, scale)
  z = jnp.square(x / scale)
  special = (alpha == 2) | jnp.isinf(alpha)
  a = jnp.where(special, 1.0, alpha)  # any ordinary alpha: the masked branch must stay finite
  b = jnp.abs(a - 2)
  general = b * _expm1_over(a, 0.5 * jnp.log1p(z / b))
  # exp(z/2) overflows for large z; where alpha is finite that branch must not (inf * 0 = NaN).
  z_inf = jnp.where(alpha == jnp.inf, z, 0.0)
  return jnp.where(alpha == 2, 0.5 * z,
                   jnp.where(alpha == -jnp.inf, -jnp.expm1(-0.5 * z),
                             jnp.where(alpha == jnp.inf, jnp.expm1(0.5 * z_inf), general)))


def log_partition(alpha: jax.Array | float) -> jax.Array:
  """log Z(alpha), Z(alpha) = integral over x of exp(-rho(x, alpha, 1)), for alpha in [0, 2].

  (For alpha < 0 rho is bounded and the integral diverges.) Substituting x^2 = b (e^t - 1),
  b = |alpha - 2|, then t = s^2, with exprel(u) = expm1(u) / u:
      Z = 2 sqrt(b) integral_0^inf exp(s^2 - b (s^2/2) exprel(alpha s^2/2)) / sqrt(exprel(s^2)) ds
  whose integrand is smooth and even in s, equals 1 at s = 0 and is negligible beyond s = 9, so a
  fixed trapezoid rule is exact to rounding. Checks: Z(0) = pi sqrt(2), Z(1) = 2 e K_1(1),
  Z(2) = sqrt(2 pi) (taken exactly). Differentiable in alpha; alpha outside [0, 2] gives NaN.
  """
  (alpha,) = _float(alpha)
  is_l2 = alpha == 2
  a = jnp.where(is_l2, 1.0, alpha)[..., None]
  b = 2 - a
  s = jnp.linspace(0.0, _S_MAX, _NODES, dtype=alpha.dtype)
  w = s * s
  log_exprel_w = w + jnp.log(_exprel(-w))  # log(expm1(w) / w) without overflow
  log_g = w - b * (w / 2) * _exprel(a * w / 2) - 0.5 * log_exprel_w
  log_integral = jax.nn.logsumexp(log_g + _LOG_TRAPEZOID_WEIGHTS.astype(alpha.dtype), axis=-1)
  out = math.log(2) + 0.5 * jnp.log(b[..., 0]) + log_integral
  out = jnp.where((alpha < 0) | (alpha > 2), jnp.nan, out)
  return jnp.where(is_l2, 0.5 * math.log(2 * math.pi), out)


def nll(x: jax.Array, alpha: jax.Array | float, scale: jax.Array | float = 1.0) -> jax.Array:
  """-log p(x | alpha, c) with p = exp(-rho(x, alpha, c)) / (c Z(alpha)); alpha in [0, 2]."""
  x, alpha, scale = _float(x, alpha, scale)
  return rho(x, alpha, scale) + jnp.log(scale) + log_partition(alpha)


def _check_range(alpha_range: tuple[float, float], lowest: float, highest: float) -> None:
  lo, hi = alpha_range
  if not lowest <= lo < hi <= highest:
    raise ValueError(f"alpha_range must be (lo, hi) with {lowest} <= lo < hi <= {highest}, "
                     f"got {alpha_range!r}")


def adaptive_params(alpha_latent, scale_latent, alpha_range=(0.001, 1.999), *,
                    scale_min: float = 1e-5) -> tuple[jax.Array, jax.Array]:
  """Unconstrained latents -> (alpha in (lo, hi) via a sigmoid, scale > scale_min via softplus).
  scale_min keeps c off 0 when softplus underflows."""
  lo, hi = alpha_range
  alpha = lo + (hi - lo) * jax.nn.sigmoid(jnp.asarray(alpha_latent, jnp.result_type(float)))
  scale = scale_min + jax.nn.softplus(jnp.asarray(scale_latent, jnp.result_type(float)))
  return alpha, scale


def latents_for(alpha: float, scale: float, alpha_range=(0.001, 1.999), *,
                scale_min: float = 1e-5) -> tuple[float, float]:
  """Inverse of `adaptive_params`: the latents to initialise with for a starting alpha and c."""
  lo, hi = alpha_range
  if not (lo < alpha < hi and scale > scale_min):
    raise ValueError(f"need {lo} < alpha < {hi} and scale > {scale_min}, got {alpha}, {scale}")
  p = (alpha - lo) / (hi - lo)
  y = scale - scale_min
  return math.log(p / (1 - p)), y + math.log(-math.expm1(-y))  # logit; softplus^-1


def adaptive_rho(x: jax.Array, alpha_latent, scale_latent, alpha_range=(0.001, 1.999), *,
                 scale_min: float = 1e-5) -> jax.Array:
  """rho with alpha and c from latents (shapes broadcast against x, e.g. one pair per tag).
  A loss to apply with fixed or scheduled latents; to learn them use `adaptive_nll`."""
  _check_range(alpha_range, -math.inf, math.inf)
  alpha, scale = adaptive_params(alpha_latent, scale_latent, alpha_range, scale_min=scale_min)
  return rho(x, alpha, scale)


def adaptive_nll(x: jax.Array, alpha_latent, scale_latent, alpha_range=(0.001, 1.999), *,
                 scale_min: float = 1e-5) -> jax.Array:
  """The paper's adaptive loss: -log p(x) with alpha and c learned; alpha_range within [0, 2]."""
  _check_range(alpha_range, 0.0, 2.0)
  alpha, scale = adaptive_params(alpha_latent, scale_latent, alpha_range, scale_min=scale_min)
  return nll(x, alpha, scale)
