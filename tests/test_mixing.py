"""Device-side MixUp / CutMix: lambda bounds, label/pixel consistency, identity, sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sw_zoo import sharding as sharding_lib
from sw_zoo.data.mixing import mix_batch

B, S, T = 16, 8, 20


def _batch():
  """Image i is the constant i + 1; label i is one-hot at i (so mixing weights are readable)."""
  images = jnp.broadcast_to(jnp.arange(1, B + 1, dtype=jnp.float32)[:, None, None, None],
                            (B, S, S, 3))
  labels = jnp.eye(B, T, dtype=jnp.float32)
  return images, labels


def _mix(images, labels, key, **kwargs):
  # Eager on purpose: each op (notably jax.random.beta's sampler) compiles once per shape and is
  # reused by every test; jitting each configuration would compile the whole function each time.
  return mix_batch(images, labels, key, **kwargs)


def _own_weight(labels):
  return np.asarray(labels)[np.arange(B), np.arange(B)]


def test_zero_alphas_are_the_identity():
  images, labels = _batch()
  out = mix_batch(images, labels, jax.random.key(0), mixup_alpha=0.0, cutmix_alpha=0.0,
                  switch_prob=0.5)
  assert out[0] is images and out[1] is labels
  out = _mix(images, labels, jax.random.key(0), mixup_alpha=0.2, cutmix_alpha=1.0,
                  switch_prob=0.5, prob=0.0)
  np.testing.assert_array_equal(out[0], images)
  np.testing.assert_array_equal(out[1], labels)


def test_mixup_pixels_and_labels_use_the_same_lambda():
  images, labels = _batch()
  mixed, mixed_labels = _mix(images, labels, jax.random.key(1), mixup_alpha=0.4,
                                  cutmix_alpha=0.0, switch_prob=0.5)
  lam = _own_weight(mixed_labels)
  assert np.all((lam >= 0) & (lam <= 1)) and len(np.unique(lam)) > 1  # per example
  partner = np.roll(np.arange(1, B + 1), 1)
  expected = lam * np.arange(1, B + 1) + (1 - lam) * partner
  np.testing.assert_allclose(np.asarray(mixed)[:, 0, 0, 0], expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(mixed_labels).sum(1), 1.0, rtol=1e-6)  # label mass kept
  np.testing.assert_allclose(np.asarray(mixed_labels)[np.arange(B), np.roll(np.arange(B), 1)],
                             1 - lam, rtol=1e-5, atol=1e-6)


def test_cutmix_label_weight_is_the_unpasted_area():
  images, labels = _batch()
  mixed, mixed_labels = _mix(images, labels, jax.random.key(2), mixup_alpha=0.0,
                                  cutmix_alpha=1.0, switch_prob=0.5)
  mixed = np.asarray(mixed)
  own = mixed == np.arange(1, B + 1)[:, None, None, None]
  partner = mixed == np.roll(np.arange(1, B + 1), 1)[:, None, None, None]
  assert np.all(own | partner)  # every pixel comes from one of the two, unblended
  np.testing.assert_allclose(own[..., 0].mean(axis=(1, 2)), _own_weight(mixed_labels), atol=1e-6)
  assert partner.any()
  np.testing.assert_allclose(np.asarray(mixed_labels).sum(1), 1.0, rtol=1e-6)


def test_switch_prob_chooses_between_cutmix_and_mixup():
  images, labels = _batch()
  for switch_prob, want_cut in ((1.0, True), (0.0, False)):
    mixed, _ = _mix(images, labels, jax.random.key(3), mixup_alpha=0.5, cutmix_alpha=1.0,
                         switch_prob=switch_prob)
    mixed = np.asarray(mixed)
    blended = ~np.isin(mixed, np.arange(1, B + 1))
    assert blended.any() != want_cut


def test_per_batch_mode_draws_one_lambda():
  images, labels = _batch()
  _, mixed_labels = _mix(images, labels, jax.random.key(4), mixup_alpha=0.4,
                              cutmix_alpha=0.0, switch_prob=0.5, per_example=False)
  assert len(np.unique(_own_weight(mixed_labels))) == 1


def test_integer_images_become_float_and_bad_arguments_fail():
  images, labels = _batch()
  out, _ = mix_batch(images.astype(jnp.uint8), labels, jax.random.key(0), mixup_alpha=0.2,
                     cutmix_alpha=0.0)
  assert out.dtype == jnp.float32
  with pytest.raises(ValueError, match="mixup_alpha"):
    _mix(images, labels, jax.random.key(0), mixup_alpha=-1.0, cutmix_alpha=0.0)
  with pytest.raises(ValueError, match="switch_prob"):
    _mix(images, labels, jax.random.key(0), mixup_alpha=0.2, cutmix_alpha=1.0,
              switch_prob=2.0)
  with pytest.raises(ValueError, match="same B"):
    mix_batch(images, labels[:4], jax.random.key(0), mixup_alpha=0.2, cutmix_alpha=0.0)


def test_jit_on_an_8_device_sharded_batch_keeps_shardings_and_values():
  assert jax.device_count() == 8
  # The trainer's own mesh and batch sharding: batch split over ('data', 'fsdp') = 4 x 2.
  batch_sharding = sharding_lib.batch_sharding(sharding_lib.make_mesh([("data", 4), ("fsdp", 2)]))
  images, labels = _batch()
  fn = functools.partial(mix_batch, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5)
  expected = fn(images, labels, jax.random.key(5))
  got = jax.jit(fn)(jax.device_put(images, batch_sharding),
                    jax.device_put(labels, batch_sharding), jax.random.key(5))
  for out, want in zip(got, expected):
    assert out.sharding == batch_sharding
    np.testing.assert_allclose(out, want, rtol=1e-6)
