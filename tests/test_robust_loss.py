"""Barron's general and adaptive robust loss: closed forms, gradients, shape, partition function."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from sw_zoo.train import robust_loss as rl

X = np.concatenate([np.linspace(-12.0, 12.0, 241), [0.0, 1e-20, -1e-6, 1e-3, 40.0]])
SCALES = (0.5, 3.0)


def _closed_form(alpha, z):
  """The named losses rho reduces to, in float64; z = (x / c)^2."""
  return {2.0: 0.5 * z, 1.0: np.sqrt(z + 1) - 1, 0.0: np.log1p(0.5 * z),
          -2.0: 2 * z / (z + 4), -np.inf: -np.expm1(-0.5 * z)}[alpha]


# float64 is tight to rounding; float32 to a few ulps of rho (atol covers rho ~ 0 near x = 0).
@pytest.mark.parametrize("x64, rtol, atol", [(True, 1e-13, 1e-15), (False, 1e-6, 1e-7)])
@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.0, -2.0, -np.inf])
def test_rho_matches_the_closed_forms(x64, rtol, atol, alpha):
  with jax.enable_x64(x64):
    for c in SCALES:
      got = np.asarray(rl.rho(X, alpha, c))
      np.testing.assert_allclose(got, _closed_form(alpha, (X / c) ** 2), rtol=rtol, atol=atol)


@pytest.mark.parametrize("x64, alpha, atol", [(True, -1e12, 3e-12), (False, -1e9, 1e-6)])
def test_large_negative_alpha_approaches_welsch(x64, alpha, atol):
  # The gap is below ~3 / |alpha|: rho saturates at |alpha - 2| / |alpha| = 1 + 2 / |alpha|.
  with jax.enable_x64(x64):
    for c in SCALES:
      np.testing.assert_allclose(rl.rho(X, alpha, c), _closed_form(-np.inf, (X / c) ** 2),
                                 rtol=0, atol=atol)


def test_rho_is_continuous_through_the_special_alphas():
  with jax.enable_x64(True):
    for alpha in (2.0, 0.0, 1.0, -2.0):
      for eps in (1e-5, -1e-5):
        np.testing.assert_allclose(rl.rho(X, alpha + eps, 1.7), rl.rho(X, alpha, 1.7),
                                   rtol=1e-3, atol=1e-12)


SPECIAL = [2.0, 1.0, 0.0, -2.0, -np.inf, np.inf, 1e-30, 2.0 - 1e-7, 2.0 + 1e-7, 0.001, 1.999, -1e9]


@pytest.mark.parametrize("alpha", SPECIAL)
def test_gradients_are_finite_at_zero_and_at_the_special_alphas(alpha):
  grad = jax.grad(rl.rho, argnums=(0, 1, 2))
  for x in (0.0, 1e-20, 0.3, -4.0, 30.0):
    if alpha == np.inf and abs(x) > 5:
      continue  # exp(z/2) - 1 overflows float32 there: a property of the loss, not the gradient
    gx, ga, gc = grad(x, alpha, 1.5)
    assert np.isfinite([gx, ga, gc]).all(), (x, alpha, gx, ga, gc)
    if x == 0.0:
      assert gx == 0.0 and gc == 0.0
  # Every member of the family is 0.5 (x/c)^2 to second order: curvature 1/c^2 at x = 0.
  curvature = jax.grad(jax.grad(rl.rho))(0.0, alpha, 1.5)
  np.testing.assert_allclose(curvature, 1 / 1.5**2, rtol=1e-5)


@pytest.mark.parametrize("alpha, derivative", [
    (2.0, lambda x: x), (1.0, lambda x: x / np.sqrt(x * x + 1)),
    (0.0, lambda x: 2 * x / (x * x + 2)), (-2.0, lambda x: 16 * x / (x * x + 4) ** 2),
    (-np.inf, lambda x: x * np.exp(-0.5 * x * x))])
def test_x_gradient_matches_the_closed_forms(alpha, derivative):
  with jax.enable_x64(True):
    got = jax.vmap(jax.grad(rl.rho), (0, None, None))(jnp.asarray(X), alpha, 1.0)
    np.testing.assert_allclose(got, derivative(X), rtol=1e-12, atol=1e-15)


def test_alpha_gradient_is_right_at_cauchy():
  # alpha = 0 goes through the general expression (by a series), so its alpha-gradient is the true
  # derivative, not the 0 a special-cased branch would give. Differentiating
  # (2 - alpha) expm1(alpha L/2) / alpha, L = log1p(z / (2 - alpha)), at alpha = 0 gives
  # -L/2 + z / (2 (z + 2)) + L^2 / 4 with L = log1p(z / 2).
  with jax.enable_x64(True):
    for x in (0.5, 2.0, 7.0):
      z = (x / 1.3) ** 2
      log_term = math.log1p(z / 2)
      want = -log_term / 2 + z / (2 * (z + 2)) + log_term**2 / 4
      np.testing.assert_allclose(jax.grad(rl.rho, argnums=1)(x, 0.0, 1.3), want, rtol=1e-12)
      assert want > 0  # rho grows with alpha


@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -2.0, -10.0, -np.inf])
def test_rho_is_even_and_monotone_in_abs_x(alpha):
  with jax.enable_x64(True):
    x = np.linspace(0.0, 6.0, 601)  # beyond, Welsch is 1 to float64 precision
    r = np.asarray(rl.rho(x, alpha, 0.8))
    assert r[0] == 0.0 and np.all(np.diff(r) > 0)
    np.testing.assert_array_equal(np.asarray(rl.rho(-x, alpha, 0.8)), r)
  # float32: may saturate (Welsch -> 1) but never turns down, nor passes its bound.
  r32 = np.asarray(rl.rho(np.linspace(0.0, 40.0, 2001), alpha, 0.8))
  assert np.all(np.diff(r32) >= 0) and r32[1] > 0
  if alpha < 0:
    assert r32[-1] <= (1.0 if alpha == -np.inf else abs(alpha - 2) / -alpha)

def test_rho_is_monotone_in_alpha():
  alphas = np.array([-np.inf, -1e3, -8.0, -2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 8.0])
  with jax.enable_x64(True):
    r = np.asarray(rl.rho(np.array([0.3, 1.0, 4.0])[:, None], alphas[None, :], 1.0))
  assert np.all(np.diff(r, axis=1) > 0)


def test_rho_and_gradients_jit_with_traced_special_alphas():
  alphas = jnp.array([2.0, 1.0, 0.0, -2.0, -jnp.inf, 0.7])
  x = jnp.linspace(-3.0, 3.0, 7)[:, None]
  eager = rl.rho(x, alphas, 1.2)
  np.testing.assert_allclose(jax.jit(rl.rho)(x, alphas, 1.2), eager, rtol=1e-6, atol=1e-7)
  grads = jax.jit(jax.grad(lambda x, a: rl.rho(x, a, 1.2).sum(), argnums=(0, 1)))(x, alphas)
  assert all(np.isfinite(g).all() for g in grads)
  out = jax.jit(rl.adaptive_rho)(x, jnp.zeros(6), jnp.zeros(6))
  assert out.shape == (7, 6) and np.isfinite(out).all()
  assert np.isfinite(jax.jit(rl.adaptive_nll)(x, jnp.zeros(6), jnp.zeros(6))).all()


def test_log_partition_matches_closed_forms_and_quadrature():
  with jax.enable_x64(True):
    closed = {0.0: math.pi * math.sqrt(2), 1.0: 2 * math.e * special.k1(1.0),
              2.0: math.sqrt(2 * math.pi)}
    for alpha, z in closed.items():
      np.testing.assert_allclose(rl.log_partition(alpha), math.log(z), rtol=1e-13)
    for alpha in (0.001, 0.3, 1.4, 1.999):
      # The paper's formula as written (fine in float64 away from the special alphas).
      b = abs(alpha - 2)
      z, _ = integrate.quad(lambda x: math.exp(-b / alpha * ((x * x / b + 1) ** (alpha / 2) - 1)),
                            -np.inf, np.inf, epsabs=0, epsrel=1e-12, limit=500)
      np.testing.assert_allclose(rl.log_partition(alpha), math.log(z), rtol=1e-11)
    # The alpha-gradient through the quadrature agrees with finite differences.
    for alpha in (0.2, 1.0, 1.9):
      fd = (rl.log_partition(alpha + 1e-6) - rl.log_partition(alpha - 1e-6)) / 2e-6
      np.testing.assert_allclose(jax.grad(rl.log_partition)(alpha), fd, rtol=1e-6)
    assert np.isnan(rl.log_partition(-0.5)) and np.isnan(rl.log_partition(2.5))
  np.testing.assert_allclose(rl.log_partition(jnp.array([0.0, 1.0, 1.999])),
                             [math.log(closed[0.0]), math.log(closed[1.0]), 0.9206003492316077],
                             rtol=2e-6)


def test_nll_is_a_normalised_density():
  with jax.enable_x64(True):
    nll = jax.jit(rl.nll)
    for alpha, c in ((0.05, 0.7), (1.2, 2.5), (2.0, 1.3)):
      total, _ = integrate.quad(lambda x: math.exp(-float(nll(x, alpha, c))), -np.inf, np.inf,
                                epsabs=0, epsrel=1e-10, limit=500)
      np.testing.assert_allclose(total, 1.0, rtol=1e-9)


def test_adaptive_parametrisation():
  alpha, scale = rl.adaptive_params(jnp.array([-50.0, 0.0, 50.0]), jnp.array([-200.0, 0.0, 5.0]),
                                    (0.5, 1.5), scale_min=1e-4)
  np.testing.assert_allclose(alpha, [0.5, 1.0, 1.5], atol=1e-6)
  np.testing.assert_allclose(scale, [1e-4, 1e-4 + math.log(2), 1e-4 + math.log1p(math.exp(5))],
                             rtol=1e-6)
  la, ls = rl.latents_for(1.3, 0.25)
  np.testing.assert_allclose(rl.adaptive_params(la, ls), (1.3, 0.25), rtol=1e-6)
  x = jnp.linspace(-2.0, 2.0, 9)
  np.testing.assert_allclose(rl.adaptive_rho(x, la, ls), rl.rho(x, 1.3, 0.25), rtol=1e-5)
  with pytest.raises(ValueError, match="alpha_range"):
    rl.adaptive_nll(x, 0.0, 0.0, alpha_range=(-1.0, 1.0))
  with pytest.raises(ValueError, match="alpha_range"):
    rl.adaptive_rho(x, 0.0, 0.0, alpha_range=(1.0, 1.0))
  with pytest.raises(ValueError, match="alpha"):
    rl.latents_for(2.0, 1.0)


@pytest.mark.parametrize("kind", ["gaussian", "cauchy"])
def test_adaptive_nll_recovers_shape_and_scale(kind):
  # Maximum likelihood: Gaussian data (sigma 2) put alpha at the top of its range and c at sigma;
  # Cauchy data (gamma 1.5 = c sqrt 2 at alpha = 0) at the bottom. A wrong log Z would not.
  rng = np.random.default_rng(0)
  data = (2.0 * rng.standard_normal(4000) if kind == "gaussian"
          else 1.5 * rng.standard_cauchy(4000)).astype(np.float32)
  want_alpha, want_scale = (1.999, 2.0) if kind == "gaussian" else (0.001, 1.5 / math.sqrt(2))
  alphas, scales = np.linspace(0.001, 1.999, 21), np.linspace(0.5, 2.5, 41)
  mean_nll = rl.nll(data[:, None, None], alphas[:, None], scales[None, :]).mean(0)
  i, j = np.unravel_index(np.argmin(mean_nll), mean_nll.shape)
  assert alphas[i] == want_alpha and abs(scales[j] - want_scale) <= 0.1, (alphas[i], scales[j])
  # Gradient descent on the latents (Adam, written out) heads the same way.
  grad = jax.grad(lambda p: rl.adaptive_nll(data, p[0], p[1]).mean())

  def adam(i, state):
    params, m, v = state
    g, t = grad(params), i + 1.0
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    return params - 0.1 * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8), m, v
  start = (jnp.array(rl.latents_for(1.0, 1.0)), jnp.zeros(2), jnp.zeros(2))
  params, _, _ = jax.jit(lambda s: jax.lax.fori_loop(0, 600, adam, s))(start)
  alpha, scale = rl.adaptive_params(params[0], params[1])
  assert abs(alpha - want_alpha) < 0.1 and abs(scale - want_scale) < 0.15, (alpha, scale)
