"""Issue 17 item 4: tag capping, staged sampling, ReduceLROnPlateau, and their config errors.

Sampler statistics and stage arithmetic are checked on index streams (no images); one pipeline
test checks the iterator state round trip in both stages and per-process slices; one short
end-to-end run checks a staged, capped, plateau-scheduled run resumes exactly.
"""
import json
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import base_config
from sw_zoo import sharding
from sw_zoo.data import balance, pipeline, sampling
from sw_zoo.train import config_check, optimizer
from sw_zoo.train.checkpointing import Checkpointer
from sw_zoo.train.loop import train_and_evaluate
from sw_zoo.train.plateau import Plateau
from tests.test_train import tiny_config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """tests/test_train.py's dataset: 96 train / 20 validation synthetic images at 32 px."""
  from data_prep import synthetic

  out = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(out, num_train=96, num_val=20, image_size=32, seed=1)
  return out


def _long_tailed_labels(num_examples=3000, num_tags=24, seed=0):
  """Tag t on each example independently with probability 0.6 / (t + 1)^1.3 (t = 0 on ~60%)."""
  rng = np.random.default_rng(seed)
  p = 0.6 / np.arange(1, num_tags + 1) ** 1.3
  hot = rng.random((num_examples, num_tags)) < p
  return balance.labels_to_csr([np.flatnonzero(row) for row in hot]), hot


# ---- Tag cap and max_repeat ---------------------------------------------------------------------


def test_tag_cap_keeps_examples_with_a_rarer_tag_and_thins_the_rest_to_the_commonest_tags_rate():
  # 10 examples. counts: tag 0 on 8, tag 1 on 5, tag 2 on 1. Cap 4 images (0.4): tags 0 and 1 are over it.
  labels = [[0]] * 3 + [[0, 1]] * 4 + [[0, 2], [1], []]
  offsets, indices = balance.labels_to_csr(labels)
  keep = balance.tag_cap_keep(offsets, indices, cap_fraction=0.4)
  # {0}: 4/8; {0, 1}: min(4/8, 4/5) = 0.5; {0, 2}: tag 2 is under the cap -> kept; {1}: 4/5; {}: kept.
  np.testing.assert_allclose(keep, [0.5] * 7 + [1.0, 0.8, 1.0])
  # With repeat factors, only the examples that are not thinned are repeated.
  f = balance.sampling_factors(offsets, indices, repeat_threshold=0.4, cap_fraction=0.4)
  np.testing.assert_allclose(f, [0.5] * 7 + [2.0, 0.8, 1.0])  # {0, 2}: sqrt(0.4 / 0.1) = 2
  f = balance.sampling_factors(offsets, indices, repeat_threshold=0.4, max_repeat=1.5, cap_fraction=0.4)
  assert f[7] == 1.5
  with pytest.raises(ValueError, match="max_repeat"):
    balance.sampling_factors(offsets, indices, max_repeat=2.0)
  with pytest.raises(ValueError, match="cap_fraction"):
    balance.tag_cap_keep(offsets, indices, cap_fraction=0.0)


def test_tag_cap_bounds_each_tags_expected_images_and_the_sampler_delivers_them():
  (offsets, indices), hot = _long_tailed_labels()
  n, cap = hot.shape[0], 300
  counts = hot.sum(0)
  factors = balance.sampling_factors(offsets, indices, repeat_threshold=0.05, max_repeat=3.0,
                                     cap_fraction=cap / n)
  assert factors.max() <= 3.0
  expected = hot.T.astype(np.float64) @ factors  # images per tag per epoch
  over = counts > cap
  has_rarer = (hot & ~over[None, :]).any(1)  # examples kept whole for a tag under the cap
  assert over.sum() >= 3 and (~over).sum() >= 10
  for t in np.flatnonzero(over):
    # Thinned examples of an over-cap tag contribute at most the cap; the rest are rarer tags' images.
    thinned = hot[:, t] & ~has_rarer
    assert hot[thinned, t] @ factors[thinned] <= cap + 1e-9
    assert expected[t] < counts[t]
  for t in np.flatnonzero(~over):
    assert expected[t] >= counts[t]  # never thinned; repeated when rarer than the threshold
  # Against repeat factors alone: tags under the cap keep exactly their images; the commonest
  # tag loses ~40% (about half its images carry a tag under the cap and so are kept).
  uncapped = hot.T.astype(np.float64) @ balance.sampling_factors(offsets, indices, repeat_threshold=0.05,
                                                                 max_repeat=3.0)
  np.testing.assert_allclose(expected[~over], uncapped[~over])
  assert expected[0] < 0.65 * uncapped[0]
  # The sampler delivers those expectations (each epoch floor(f) or ceil(f) times per example).
  sampler = balance.RepeatFactorSampler(factors, seed=1)
  epochs = 60
  seen = sum(np.bincount(sampler.epoch(e), minlength=n) for e in range(epochs)) / epochs
  assert np.all(np.bincount(sampler.epoch(0), minlength=n) <= 3)
  np.testing.assert_allclose(hot.T @ seen, expected, rtol=0.05)


# ---- Stages -------------------------------------------------------------------------------------


def test_parse_stages_and_its_errors():
  assert sampling.parse_stages("") == []
  stages = sampling.parse_stages("balanced:2epochs, all")
  assert stages == [sampling.Stage("balanced", epochs=2.0), sampling.Stage("all")]
  assert sampling.stage_steps(stages, 50) == [("balanced", 100), ("all", None)]
  assert sampling.stage_steps(sampling.parse_stages("all:300steps,balanced:0.5 epoch,all"), 7) == [
      ("all", 300), ("balanced", 4), ("all", None)]
  assert sampling.describe([("balanced", 100), ("all", None)]) == "balanced for steps 1-100, then all from step 101"
  for spec, match in [("balanced:2epochs", "last stage"), ("balanced,all", "needs a length"),
                      ("rare:2steps,all", "'rare' is not one of"), ("balanced:2,all", "not N steps or N epochs"),
                      ("balanced:1.5steps,all", "whole number"), ("balanced:0epochs,all", "> 0")]:
    with pytest.raises(ValueError, match=match):
      sampling.parse_stages(spec)


def test_stage_stream_switches_at_the_boundary_position_and_restarts_each_sampling():
  factors = np.array([3.0, 0.5, 1.0, 2.0, 0.2, 1.0])
  n, batch = len(factors), 4
  order = sampling.stream_order(n, [("balanced", 3), ("all", None)], batch_size=batch, seed=5, factors=factors)
  alone = balance.RepeatFactorSampler(factors, seed=5)  # stage 0 streams as the sampling alone would
  boundary = 3 * batch
  assert [order[p] for p in range(boundary)] == [alone[p] for p in range(boundary)]
  after = [order[p] for p in range(boundary, boundary + 3 * n)]
  for e in range(3):  # then whole epochs of all examples, reshuffled
    assert sorted(after[e * n:(e + 1) * n]) == list(range(n))
  assert after[:n] != after[n:2 * n]
  # Positions are arithmetic: a fresh stream jumping anywhere agrees.
  fresh = sampling.stream_order(n, [("balanced", 3), ("all", None)], batch_size=batch, seed=5, factors=factors)
  assert [fresh[p] for p in (boundary + 5, 2, boundary - 1)] == [order[p] for p in (boundary + 5, 2, boundary - 1)]
  # all -> balanced (a balanced finish) works the same way; a single stage is the plain stream.
  rev = sampling.stream_order(n, [("all", 2), ("balanced", None)], batch_size=batch, seed=5, factors=factors)
  assert sorted(rev[p] for p in range(n)) == list(range(n))
  assert isinstance(sampling.stream_order(n, [("balanced", None)], batch_size=batch, seed=5, factors=factors),
                    balance.RepeatFactorSampler)
  with pytest.raises(ValueError, match="no sampling factors"):
    sampling.stream_order(n, [("balanced", None)], batch_size=batch, seed=5)


def test_staged_pipeline_resumes_exactly_in_either_stage_and_samples_per_process(tiny_data):
  kwargs = dict(global_batch_size=8, image_size=32, seed=2, augment=False, num_threads=1,
                repeat_factor_threshold=0.3, max_repeat=2.0, tag_cap=20)
  stages = [("balanced", 2), ("all", None)]
  it = iter(pipeline.make_train_dataset(tiny_data, stages=stages, **kwargs))
  batches = [next(it) for _ in range(5)]
  assert it.get_state() == {"next_index": 5}
  # Stage 1 is the balanced stream itself: the same batches as a balanced-only run.
  balanced = iter(pipeline.make_train_dataset(tiny_data, **kwargs))
  for b in batches[:2]:
    np.testing.assert_array_equal(next(balanced)["labels"], b["labels"])
  for k in (1, 3):  # a checkpoint in the balanced stage, and one in the 'all' stage
    resumed = iter(pipeline.make_train_dataset(tiny_data, stages=stages, **kwargs))
    resumed.set_state({"next_index": k})
    for b in batches[k:]:
      got = next(resumed)
      np.testing.assert_array_equal(got["image"], b["image"])
      np.testing.assert_array_equal(got["labels"], b["labels"])
  # Two processes: each samples (and caps within) its own slice only.
  for p in range(2):
    offsets, indices = pipeline.read_split_labels(tiny_data, process_index=p, process_count=2)
    own = {tuple(indices[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)}
    it = iter(pipeline.make_train_dataset(tiny_data, stages=stages, process_index=p, process_count=2,
                                          **kwargs))
    for _ in range(3):  # balanced, balanced, all
      rows = next(it)["labels"]
      assert rows.shape[0] == 4 and all(tuple(np.flatnonzero(r)) in own for r in rows)


# ---- ReduceLROnPlateau --------------------------------------------------------------------------


def test_plateau_tracker_cuts_after_patience_floors_and_replays_to_the_resumed_step(tmp_path):
  make = lambda: Plateau.load(str(tmp_path), metric="macro_f1", factor=0.5, patience=2, min_delta=0.01,
                              min_scale=0.2)
  t = make()
  assert t.resume(0, 1.0) is None
  dropped = [t.update(s, {"macro_f1": v, "micro_f1": 0.0})
             for s, v in [(10, 0.50), (20, 0.505), (30, 0.49), (40, 0.6), (50, 0.6), (60, 0.6),
                          (70, 0.6), (80, 0.6), (90, 0.6), (100, 0.6)]]
  # 20, 30 no gain -> 0.5 at 30; 40 is a gain; 50, 60 -> 0.25; 70, 80 -> floor 0.2; then it stays.
  assert dropped == [False, False, True, False, False, True, False, True, False, False]
  assert t.scale == 0.2
  t.save()
  # Resumed from the step-40 checkpoint (scale 0.5 then): only evaluations up to 40 count.
  again = make()
  assert again.resume(40, 0.5) is None
  assert (again.scale, again.best, again.since_best, len(again.history)) == (0.5, 0.6, 0, 4)
  # A checkpoint that disagrees with the history (settings changed, file lost) wins, with a note.
  other = make()
  assert "keeping the checkpoint's" in other.resume(40, 0.25) and other.scale == 0.25
  # Another metric's history does not count.
  assert Plateau.load(str(tmp_path), metric="micro_f1", factor=0.5, patience=2, min_delta=0.0,
                      min_scale=0.2).history == []
  with pytest.raises(ValueError, match="optim.plateau.metric"):
    Plateau.load(str(tmp_path), metric="f1", factor=0.5, patience=2, min_delta=0.0, min_scale=0.2)


def _optim(**plateau):
  o = base_config().optim
  o.name, o.lr, o.agc_clip, o.weight_decay = "sgd", 0.1, 0.0, 0.0
  for k, v in plateau.items():
    o.plateau[k] = v
  return o


def test_plateau_scale_multiplies_the_lr_lives_in_the_optimizer_state_and_keeps_its_sharding(tmp_path):
  params = {"head": {"kernel": jnp.ones((4, 3))}}
  grads = [jax.tree.map(lambda p: (i + 1.0) * jnp.ones_like(p), params) for i in range(3)]
  off = optimizer.make_optimizer(_optim(), optax.constant_schedule(0.1))
  assert optimizer.plateau_scale(off.init(params)) is None  # off: the state is as before
  with pytest.raises(ValueError, match="plateau.factor"):
    optimizer.set_plateau_scale(off.init(params), 0.5)

  def run(tx, state, p):
    for g in grads:
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    return p, state

  tx = optimizer.make_optimizer(_optim(factor=0.5), optax.constant_schedule(0.1))
  state = optimizer.set_plateau_scale(tx.init(params), 0.5)
  assert optimizer.plateau_scale(state) == 0.5
  scaled, state = run(tx, state, params)
  # Nesterov momentum included: x 0.5 on the updates is the same run as half the LR.
  half = optimizer.make_optimizer(_optim(), optax.constant_schedule(0.05))
  expected, _ = run(half, half.init(params), params)
  np.testing.assert_allclose(scaled["head"]["kernel"], expected["head"]["kernel"], rtol=1e-6)
  assert optimizer.plateau_scale(state) == 0.5  # updates never change it

  # On a mesh the new scale keeps the old one's sharding (the compiled step expects it), and a
  # checkpoint carries it.
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)])
  placed = jax.device_put(tx.init(params), sharding.replicated(mesh))
  moved = optimizer.set_plateau_scale(placed, 0.25)
  leaf = [x for x in jax.tree.leaves(moved) if x.ndim == 0 and x.dtype == jnp.float32][0]
  assert leaf.sharding == sharding.replicated(mesh) and float(leaf) == 0.25
  ckpt = Checkpointer(str(tmp_path), every_steps=1, max_to_keep=1, async_save=False)
  data_iterator = iter(grain.MapDataset.range(4).to_iter_dataset())  # a checkpoint holds one
  ckpt.save(1, {"opt_state": moved}, data_iterator, force=True)
  ckpt.wait()
  restored = ckpt.restore_arrays(1)["opt_state"]
  ckpt.close()
  assert 0.25 in [float(x) for x in jax.tree.leaves(restored) if np.ndim(x) == 0]


# ---- Config errors --------------------------------------------------------------------------------


def test_config_errors_name_the_imbalance_keys(tiny_data):
  def errors(**overrides):
    c = tiny_config(tiny_data, **overrides)
    with pytest.raises(config_check.ConfigError) as err:
      config_check.validate(c)
    return str(err.value)

  assert "config.data.stages = 'balanced:2epochs,all' has a 'balanced' stage but nothing balances it" in errors(
      **{"data.stages": "balanced:2epochs,all"})
  assert "config.data.stages = 'balanced:2,all': stage 1" in errors(
      **{"data.stages": "balanced:2,all", "data.tag_cap": 10})
  assert "config.data.stages = 'all:10steps,all' has no 'balanced' stage" in errors(
      **{"data.stages": "all:10steps,all", "data.tag_cap": 10})
  assert "config.data.max_repeat=3.0 needs config.data.repeat_factor_threshold > 0" in errors(
      **{"data.max_repeat": 3.0})
  assert "config.data.max_repeat = 0.5" in errors(**{"data.max_repeat": 0.5, "data.repeat_factor_threshold": 0.1})
  assert "config.data.tag_cap = -1" in errors(**{"data.tag_cap": -1})
  text = errors(**{"optim.plateau.factor": 1.5, "optim.plateau.patience": 0, "optim.plateau.metric": "loss",
                   "optim.plateau.min_scale": 0.0})
  for key in ("factor = 1.5", "patience = 0", "metric = 'loss'", "min_scale = 0.0"):
    assert f"config.optim.plateau.{key}" in text
  config_check.validate(tiny_config(tiny_data, **{
      "data.stages": "balanced:1epochs,all", "data.tag_cap": 10, "data.repeat_factor_threshold": 0.1,
      "data.max_repeat": 4.0, "optim.plateau.factor": 0.5}))


# ---- End to end -----------------------------------------------------------------------------------


def test_staged_capped_plateau_run_cuts_the_lr_and_resumes_with_it(tiny_data, tmp_path, capsys):
  """Balanced (repeat factors, max_repeat, tag cap) for 3 steps, then all data; the LR halves at
  the step-4 evaluation (min_delta 1: no evaluation after the first can count as a gain). Stopped
  after step 5 (second stage, past the cut) and rerun to 6, it continues at the cut LR from the
  checkpoint. (That the rest of a resumed run is exact is tests/test_train.py's resumed-run test;
  the data stream in either stage is test_staged_pipeline_resumes_exactly_in_either_stage above.)"""
  overrides = {"model.name": "nano", "total_steps": 5, "eval_every_steps": 2, "log_every_steps": 1,
               "checkpoint.every_steps": 2, "data.repeat_factor_threshold": 0.3, "data.max_repeat": 2.0,
               "data.tag_cap": 30, "data.stages": "balanced:3steps,all", "optim.plateau.factor": 0.5,
               "optim.plateau.patience": 1, "optim.plateau.min_delta": 1.0}
  workdir = str(tmp_path / "run")
  part = train_and_evaluate(tiny_config(tiny_data, **overrides), workdir)
  resumed = train_and_evaluate(tiny_config(tiny_data, **{**overrides, "total_steps": 6}), workdir)
  out = capsys.readouterr().out
  assert "Sampling: balanced for steps 1-3, then all from step 4" in out
  assert "Resumed from checkpoint at step 5" in out and "LR scale now 0.5" in out
  assert (part["step"], resumed["step"]) == (5, 6)
  assert part["lr_scale"] == resumed["lr_scale"] == 0.5  # read from the final optimizer state

  def logged(key):
    return {l["step"]: l[key] for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if key in l}

  assert logged("train/lr_scale") == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.5, 6: 0.5}
  assert logged("train/effective_lr")[6] == pytest.approx(0.5 * logged("train/lr")[6])
  # Periodic evaluations only (the final ones do not count), each once.
  assert [s for s, _ in json.load(open(os.path.join(workdir, "plateau.json")))["history"]] == [2, 4]
