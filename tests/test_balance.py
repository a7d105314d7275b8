"""Class imbalance: per-tag loss weights, LVIS repeat factors, the deterministic epoch stream."""

import concurrent.futures
import pickle

import numpy as np
import pytest

from sw_zoo.data import balance


def test_loss_weights_have_mean_one_and_favour_rare_tags():
  counts = np.array([5000, 500, 50, 5, 0])
  for method in ("inverse_sqrt", "inverse", "effective_num", "log_ratio"):
    w = balance.tag_loss_weights(counts, 10_000, method=method)
    assert w.dtype == np.float32 and w.shape == (5,)
    assert np.isclose(w.mean(), 1.0, atol=1e-6)
    assert np.all(np.diff(w) >= 0)  # rarer -> heavier
  np.testing.assert_array_equal(balance.tag_loss_weights(counts, 10_000, method="none"), 1.0)
  w = balance.tag_loss_weights(counts[:4], 10_000, method="inverse_sqrt")
  np.testing.assert_allclose(w[1:] / w[:-1], np.sqrt(10.0), rtol=1e-5)


def test_effective_num_interpolates_between_uniform_and_inverse():
  counts = np.array([1000, 100, 10])
  inverse = balance.tag_loss_weights(counts, 2000, method="inverse")
  np.testing.assert_allclose(balance.tag_loss_weights(counts, 2000, method="effective_num",
                                                      beta=1 - 1e-9), inverse, rtol=1e-4)
  np.testing.assert_allclose(balance.tag_loss_weights(counts, 2000, method="effective_num",
                                                      beta=0.0), 1.0)


def test_clip_bounds_the_weight_ratio():
  w = balance.tag_loss_weights([100_000, 10, 1], 100_000, method="inverse", clip=20.0)
  assert np.isclose(w.max() / w.min(), 20.0) and np.isclose(w.mean(), 1.0)


def test_log_ratio_weights_follow_the_formula():
  # w_t ~ log(1 + (max_count / count_t)^2), then rescaled to mean 1; num_examples plays no part.
  counts = np.array([100, 50, 10, 1])
  raw = np.log([1 + 1, 1 + 4, 1 + 100, 1 + 10_000])
  w = balance.tag_loss_weights(counts, 1000, method="log_ratio")
  assert w.dtype == np.float32
  np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
  np.testing.assert_array_equal(balance.tag_loss_weights(counts, 10**6, method="log_ratio"), w)
  # Equal counts: every ratio is 1, so all weights are log 2 before rescaling.
  np.testing.assert_allclose(balance.tag_loss_weights([7, 7, 7], 10, method="log_ratio"), 1.0)


def test_log_ratio_clip_and_zero_counts():
  counts = np.array([100, 50, 10, 1])
  raw = np.log1p(np.square(100.0 / counts))
  w = balance.tag_loss_weights(counts, 1000, method="log_ratio", clip=5.0)
  # clip bounds max/min to 5: min stays log 2, so the two rarest tags are capped at 5 log 2.
  capped = np.minimum(raw, 5 * np.log(2))
  np.testing.assert_allclose(w, capped / capped.mean(), rtol=1e-6)
  assert np.isclose(w.max() / w.min(), 5.0) and np.isclose(w.mean(), 1.0)
  # A zero count is treated as 1, as for the other methods (an unseen tag weighs like a singleton).
  w0 = balance.tag_loss_weights([100, 50, 10, 0], 1000, method="log_ratio")
  np.testing.assert_array_equal(w0, balance.tag_loss_weights(counts, 1000, method="log_ratio"))
  # All counts zero: the ratios are all 1, the weights all equal.
  np.testing.assert_allclose(balance.tag_loss_weights([0, 0], 5, method="log_ratio"), 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(counts=[1, -1], num_examples=5), "tag 1"),
    (dict(counts=[1, 2], num_examples=0), "num_examples"),
    (dict(counts=[1, 2], num_examples=5, method="sqrt"), "'sqrt'"),
    (dict(counts=[1, 2], num_examples=5, clip=0.5), "clip"),
    (dict(counts=[1, 2], num_examples=5, method="effective_num", beta=1.0), "beta"),
])
def test_loss_weight_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    balance.tag_loss_weights(**kwargs)


def test_repeat_factors_follow_the_lvis_formula():
  # 10 examples; tag 0 on all of them, tag 1 on two, tag 2 on one; example 9 has no tags.
  labels = [[0]] * 7 + [[0, 1], [0, 1, 2], []]
  offsets, indices = balance.labels_to_csr(labels)
  assert offsets.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 12, 12]
  r = balance.repeat_factors(offsets, indices, threshold=0.4)
  # f = (0.9, 0.2, 0.1): per-tag factors (1, sqrt(2), 2).
  np.testing.assert_allclose(r, [1] * 7 + [np.sqrt(2), 2, 1])
  np.testing.assert_allclose(balance.repeat_factors(offsets, indices, threshold=0.4,
                                                    max_factor=1.5), [1] * 7 + [np.sqrt(2), 1.5, 1])
  normalized = balance.repeat_factors(offsets, indices, threshold=0.4, normalize=True)
  assert np.isclose(normalized.mean(), 1.0) and normalized[0] < 1.0  # common-only: under-sampled
  # Frequencies may come from elsewhere (e.g. the whole dataset).
  r = balance.repeat_factors(offsets, indices, threshold=0.4, tag_frequency=[1.0, 1.0, 0.4])
  np.testing.assert_allclose(r, [1] * 10)
  with pytest.raises(ValueError, match="threshold"):
    balance.repeat_factors(offsets, indices, threshold=0.0)
  with pytest.raises(ValueError, match="outside"):
    balance.repeat_factors(offsets, indices, threshold=0.1, tag_frequency=[0.5, 0.5])


def test_sampler_epochs_repeat_each_example_floor_or_ceil_times():
  factors = np.array([1.0, 2.5, 0.3, 4.0, 1.7])
  sampler = balance.RepeatFactorSampler(factors, seed=3)
  totals = np.zeros(len(factors))
  for e in range(400):
    counts = np.bincount(sampler.epoch(e), minlength=len(factors))
    assert np.all((counts == np.floor(factors)) | (counts == np.floor(factors) + 1))
    totals += counts
  np.testing.assert_allclose(totals / 400, factors, atol=0.1)
  assert not np.array_equal(sampler.epoch(0), sampler.epoch(1))


def test_sampler_stream_is_the_epochs_concatenated_and_randomly_accessible():
  factors = np.random.default_rng(0).uniform(0.2, 3.0, size=50)
  sampler = balance.RepeatFactorSampler(factors, seed=7)
  stream = np.concatenate([sampler.epoch(e) for e in range(6)])
  assert sampler.epoch_start(6) == len(stream)
  np.testing.assert_array_equal([sampler[p] for p in range(len(stream))], stream)
  # A fresh sampler jumping straight to a late position (as after set_state) agrees.
  fresh = balance.RepeatFactorSampler(factors, seed=7)
  positions = [len(stream) - 1, 3, len(stream) // 2]
  assert [fresh[p] for p in positions] == [int(stream[p]) for p in positions]
  # Concurrent readers (grain threads) see the same values.
  fresh = pickle.loads(pickle.dumps(balance.RepeatFactorSampler(factors, seed=7)))
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    got = list(pool.map(fresh.__getitem__, range(len(stream))))
  np.testing.assert_array_equal(got, stream)
  other = balance.RepeatFactorSampler(factors, seed=8)
  assert [other[p] for p in range(50)] != stream[:50].tolist()


def test_sampler_rejects_bad_factors():
  for bad in ([], [-1.0, 2.0], [np.nan], [0.1, 0.2]):
    with pytest.raises(ValueError):
      balance.RepeatFactorSampler(np.array(bad), seed=0)
