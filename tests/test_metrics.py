"""sw_zoo.evaluation.metrics against scikit-learn: streamed over padded batches, summed over halves and over
an 8-device mesh. Scores sit on the histogram's bin centres, so binning adds no error and the
binned ranking metrics must equal scikit-learn's to float precision."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from sw_zoo import sharding
from sw_zoo.evaluation import batch_stats, metrics

BINS = 64


def _data(seed=0, n=240, t=9):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, t)) < rng.uniform(0.05, 0.5, t)).astype(np.float32)
  labels[:, -1] = 0  # a tag absent from the split: excluded from macro means
  raw = np.clip(0.35 * labels + 0.65 * rng.random((n, t)), 0.0, 1.0 - 1e-6)
  probs = ((np.floor(raw * BINS) + 0.5) / BINS).astype(np.float32)
  return probs, labels


@functools.lru_cache(maxsize=None)
def _step(threshold, num_bins):
  return jax.jit(functools.partial(batch_stats.batch_stats, threshold=threshold, num_bins=num_bins))


def _stream(probs, labels, threshold=0.5, batch=64, num_bins=BINS):
  """Summed stats over fixed-size batches; the last one padded with rows that must not count."""
  total = batch_stats.zero_stats(labels.shape[1], num_bins)
  for start in range(0, len(probs), batch):
    p, y = probs[start:start + batch], labels[start:start + batch]
    mask = np.arange(batch) < len(p)
    pad = batch - len(p)
    p = np.concatenate([p, np.full((pad, p.shape[1]), 0.9, np.float32)])
    y = np.concatenate([y, np.ones((pad, y.shape[1]), np.float32)])
    total = jax.tree.map(np.add, total, jax.device_get(_step(threshold, num_bins)(p, y, mask)))
  return batch_stats.host_stats(total)


@pytest.fixture(scope="module")
def data():
  probs, labels = _data()
  return probs, labels, _stream(probs, labels)


def test_counts_at_threshold_match_sklearn(data):
  probs, labels, stats = data
  assert int(stats["num_images"]) == len(probs)
  pred = probs >= 0.5
  scores = metrics.threshold_scores(stats, len(probs))
  p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average="micro", zero_division=0)
  assert scores["micro_precision"] == pytest.approx(p) and scores["micro_recall"] == pytest.approx(r)
  assert scores["micro_f1"] == pytest.approx(f)
  present = np.flatnonzero(labels.sum(0) > 0)
  p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average="macro", labels=present, zero_division=0)
  assert (scores["macro_precision"], scores["macro_recall"], scores["macro_f1"]) == pytest.approx((p, r, f))
  assert scores["mcc"] == pytest.approx(skm.matthews_corrcoef(labels.ravel(), pred.ravel()))
  # The training loop's scores agree with the new ones.
  old = metrics.f1_scores(stats)
  assert old["micro_f1"] == pytest.approx(scores["micro_f1"]) and old["macro_f1"] == pytest.approx(scores["macro_f1"])
  # MCut counts equal the decisions made on the whole array at once.
  mcut = np.asarray(batch_stats.mcut_decisions(jnp.asarray(probs)))
  assert metrics.mcut_scores(stats)["mcut_micro_f1"] == pytest.approx(
      skm.f1_score(labels, mcut, average="micro", zero_division=0))


def test_histogram_curve_equals_exact_counts_at_every_edge(data):
  probs, labels, stats = data
  curve = metrics.threshold_curve(stats["pos_hist"], stats["neg_hist"])
  for k in range(0, BINS, 7):
    pred = probs >= k / BINS
    assert curve.tp[k] == (pred & (labels > 0)).sum() and curve.fp[k] == (pred & (labels == 0)).sum()
    assert curve.fn[k] == (~pred & (labels > 0)).sum()
  k = BINS // 2  # the streamed at-threshold counts are the curve's point at that edge
  assert curve.tp[k] == stats["tp"].sum() and curve.fp[k] == stats["fp"].sum()


def test_average_precision_and_auc_match_sklearn(data):
  probs, labels, stats = data
  pos, neg = stats["pos_hist"], stats["neg_hist"]
  ap, auc = metrics.average_precision(pos, neg), metrics.roc_auc(pos, neg)
  present = labels.sum(0) > 0
  for t in np.flatnonzero(present):
    assert ap[t] == pytest.approx(skm.average_precision_score(labels[:, t], probs[:, t]), abs=1e-12)
    assert auc[t] == pytest.approx(skm.roc_auc_score(labels[:, t], probs[:, t]), abs=1e-12)
  assert np.isnan(ap[~present]).all() and np.isnan(auc[~present]).all()
  assert np.nanmean(ap) == pytest.approx(skm.average_precision_score(labels[:, present], probs[:, present]))
  assert metrics.average_precision(pos.sum(0), neg.sum(0)) == pytest.approx(
      skm.average_precision_score(labels, probs, average="micro"))
  assert metrics.roc_auc(pos.sum(0), neg.sum(0)) == pytest.approx(skm.roc_auc_score(labels, probs, average="micro"))
  # Per-tag pass (chunked) agrees with the direct functions and with a brute-force best F1.
  for chunk in (2, 512):
    per_tag = metrics.per_tag_curves(pos, neg, chunk_size=chunk)
    np.testing.assert_allclose(per_tag["ap"], ap)
    np.testing.assert_allclose(per_tag["auc"], auc)
  for t in np.flatnonzero(present):
    f1s = [skm.f1_score(labels[:, t], probs[:, t] >= k / BINS) for k in range(BINS)]
    assert per_tag["best_f1"][t] == pytest.approx(max(f1s))
    assert per_tag["best_threshold"][t] == int(np.argmax(f1s)) / BINS


def test_histograms_of_two_halves_sum_to_the_whole():
  probs, labels = _data(seed=3, n=200)
  whole = _stream(probs, labels)
  halves = [_stream(probs[:120], labels[:120]), _stream(probs[120:], labels[120:])]
  for key in batch_stats.STAT_KEYS:
    np.testing.assert_array_equal(halves[0][key] + halves[1][key], whole[key], err_msg=key)


def test_sharded_stats_equal_single_device():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  probs, labels = _data(seed=5, n=64, t=300)
  mask = np.arange(64) < 60
  fn = functools.partial(batch_stats.batch_stats, threshold=0.4, num_bins=128)
  sharded = jax.jit(fn, in_shardings=(sharding.batch_sharding(mesh),) * 3, out_shardings=sharding.replicated(mesh))
  batch = sharding.global_batch({"p": probs, "y": labels, "m": mask}, mesh)
  got = jax.device_get(sharded(batch["p"], batch["y"], batch["m"]))
  want = jax.device_get(jax.jit(fn)(probs, labels, mask))
  for key in batch_stats.STAT_KEYS:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_p_eq_r_and_best_f1_operating_points(data):
  _, _, stats = data
  curve = metrics.threshold_curve(stats["pos_hist"], stats["neg_hist"])
  predicts = curve.tp + curve.fp > 0
  gaps = np.abs(curve.precision - curve.recall)[predicts]
  point = metrics.precision_equals_recall(curve)
  assert abs(point.precision - point.recall) == pytest.approx(gaps.min())
  k = round(point.threshold * BINS)
  assert point.f1 == pytest.approx(curve.f1[k])
  best = metrics.best_f1(curve)
  assert best.f1 == pytest.approx(curve.f1.max()) and best.f1 >= point.f1
  empty = metrics.threshold_curve(np.zeros(BINS, np.int64), np.ones(BINS, np.int64))
  assert np.isnan(metrics.best_f1(empty).threshold) and np.isnan(metrics.precision_equals_recall(empty).threshold)


def test_mcut_cuts_at_the_largest_gap():
  probs = jnp.asarray([[0.9, 0.8, 0.2, 0.1],    # gap 0.8 -> 0.2: two tags
                       [0.3, 0.95, 0.25, 0.2],  # gap 0.95 -> 0.3: one tag
                       [0.5, 0.45, 0.4, 0.0]])  # gap 0.4 -> 0.0: three tags
  want = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(np.asarray(batch_stats.mcut_decisions(probs)), want)
  labels = jnp.asarray([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]], jnp.float32)
  stats = batch_stats.batch_stats(probs, labels, jnp.array([True, True, False]), threshold=0.5, num_bins=8)
  np.testing.assert_array_equal(stats["mcut_tp"], [1, 1, 0, 0])
  np.testing.assert_array_equal(stats["mcut_fp"], [0, 1, 0, 0])
  np.testing.assert_array_equal(stats["mcut_fn"], [0, 0, 1, 0])
  # The Tagger's per-image MCut (numpy) cuts exactly where evaluation's (jax) does.
  for row, expected in zip(np.asarray(probs), want):
    np.testing.assert_array_equal(row > metrics.mcut_threshold(row), expected)
  # One score has no gap to cut at: the cut is 0.5 in both namespaces.
  np.testing.assert_array_equal(np.asarray(batch_stats.mcut_decisions(jnp.asarray([[0.7], [0.2]]))), [[True], [False]])
  assert metrics.mcut_threshold(np.array([0.3]))[0] == 0.5


def test_score_bins_edges():
  bins = np.asarray(batch_stats.score_bins(jnp.asarray([0.0, 0.5 - 1e-7, 0.5, 0.999, 1.0]), 4))
  np.testing.assert_array_equal(bins, [0, 1, 2, 3, 3])


def test_binning_error_on_continuous_scores_is_bounded():
  """Continuous scores, 1024 bins: AUC stays within half the share of (pos, neg) pairs that
  fall in one bin (the documented bound); AP within 1e-3 here."""
  rng = np.random.default_rng(7)
  labels = (rng.random((3000, 6)) < 0.2).astype(np.float32)
  probs = (1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.5 * labels - 1)))).astype(np.float32)
  stats = _stream(probs, labels, batch=1000, num_bins=1024)
  pos, neg = stats["pos_hist"], stats["neg_hist"]
  ap, auc = metrics.average_precision(pos, neg), metrics.roc_auc(pos, neg)
  for t in range(labels.shape[1]):
    shared = (pos[t] * neg[t]).sum() / (pos[t].sum() * neg[t].sum())
    assert abs(auc[t] - skm.roc_auc_score(labels[:, t], probs[:, t])) <= 0.5 * shared + 1e-12
    assert abs(ap[t] - skm.average_precision_score(labels[:, t], probs[:, t])) < 1e-3
