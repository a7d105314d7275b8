"""Losses, optimizer chains and the train step's accumulation / NaN guard / EMA."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs.common import base_config
from sw_zoo import sharding
from sw_zoo.models import create_model
from sw_zoo.models import abstract_params
from sw_zoo.train import losses, optimizer, steps


def _loss_config(**kw):
  c = base_config().loss
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def logits_labels():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (6, 40)), jnp.float32)
  labels = jnp.asarray(rng.random((6, 40)) < 0.2, jnp.float32)
  return logits, labels


def test_asl_without_focusing_or_margin_is_bce(logits_labels):
  logits, labels = logits_labels
  asl = losses.make_loss(_loss_config(name="asl", asl_gamma_neg=0.0, asl_gamma_pos=0.0, asl_clip=0.0))
  np.testing.assert_allclose(asl(logits, labels), losses.sigmoid_bce(logits, labels), rtol=1e-5)


def test_asl_margin_ignores_easy_negatives_and_downweights_the_rest(logits_labels):
  logits, labels = logits_labels
  asl = losses.make_loss(_loss_config(name="asl"))  # gamma_neg 4, clip 0.05
  # A negative with p < clip costs nothing, and has no gradient.
  easy = jnp.full((1, 3), -4.0)  # p = 0.018
  assert float(asl(easy, jnp.zeros((1, 3)))[0]) == 0.0
  assert float(jnp.abs(jax.grad(lambda z: asl(z, jnp.zeros((1, 3))).sum())(easy)).max()) == 0.0
  # Positives are plain BCE (gamma_pos = 0); the total is below BCE because negatives shrink.
  pos_only = labels.at[:].set(1.0)
  np.testing.assert_allclose(asl(logits, pos_only), losses.sigmoid_bce(logits, pos_only), rtol=1e-5)
  assert bool(jnp.all(asl(logits, labels) < losses.sigmoid_bce(logits, labels)))
  assert bool(jnp.all(jnp.isfinite(jax.grad(lambda z: asl(z, labels).sum())(logits * 10))))


def test_focal_matches_optax_and_label_smoothing_moves_targets(logits_labels):
  logits, labels = logits_labels
  fl = losses.make_loss(_loss_config(name="focal", focal_gamma=2.0, focal_alpha=0.25))
  np.testing.assert_allclose(fl(logits, labels),
                             optax.sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0).sum(-1), rtol=1e-5)
  smoothed = losses.make_loss(_loss_config(name="bce", label_smoothing=0.1))
  np.testing.assert_allclose(smoothed(logits, labels), losses.sigmoid_bce(logits, labels * 0.9 + 0.05), rtol=1e-6)
  weights = jnp.linspace(0.5, 2.0, 40)
  np.testing.assert_allclose(smoothed(logits, labels, weights),
                             losses.sigmoid_bce(logits, labels * 0.9 + 0.05, weights), rtol=1e-6)


def _optim(**kw):
  c = base_config().optim
  for k, v in kw.items():
    c[k] = v
  return c


def _params():
  return {"stem": {"conv": {"kernel": jnp.ones((3, 3, 3, 8)), "gain": jnp.ones(8), "bias": jnp.zeros(8)}},
          "head": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)}}


@pytest.mark.parametrize("name", optimizer.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optimizer.SCHEDULES)
def test_every_optimizer_and_schedule_builds_and_updates(name, schedule):
  o = _optim(name=name, schedule=schedule, warmup_steps=2)
  sched = optimizer.make_schedule(o, total_steps=20, warmup_steps=2)
  tx = optimizer.make_optimizer(o, sched)
  p = _params()
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  lrs = [float(sched(s)) for s in range(21)]
  assert max(lrs) == pytest.approx(o.lr, rel=1e-3)
  if schedule == "constant":
    assert lrs[0] == 0.0 and lrs[2:] == [pytest.approx(o.lr)] * 19  # linear warmup, then flat
  else:
    assert lrs[-1] < 0.01 * o.lr


def test_onecycle_rises_then_anneals():
  o = _optim(schedule="onecycle", lr=1.0, onecycle_pct_start=0.25)
  sched = optimizer.make_schedule(o, total_steps=100, warmup_steps=0)
  assert float(sched(0)) == pytest.approx(1.0 / 25)
  assert float(sched(25)) == pytest.approx(1.0, rel=1e-3)
  assert float(sched(100)) < 1e-4


def test_weight_decay_spares_gains_biases_and_excluded_paths():
  mask = optimizer.decay_mask_fn(r"^head/")(_params())
  assert mask["stem"]["conv"] == {"kernel": True, "gain": False, "bias": False}
  assert mask["head"] == {"kernel": False, "bias": False}


def test_agc_clips_the_body_but_not_the_excluded_head():
  o = _optim(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, agc_clip=0.01, agc_exclude=r"^head/")
  tx = optimizer.make_optimizer(o, optax.constant_schedule(1.0))
  p = _params()
  huge = jax.tree.map(lambda x: jnp.full_like(x, 100.0), p)
  updates, _ = tx.update(huge, tx.init(p), p)
  # The body's update is clipped to 1% of the weight norm; the head's is the raw gradient.
  assert float(jnp.abs(updates["stem"]["conv"]["kernel"]).max()) < 0.1
  np.testing.assert_allclose(updates["head"]["kernel"], -100.0)


def test_freeze_regex_zeroes_updates_and_keeps_no_state_for_frozen_params():
  o = _optim(name="adamw", lr=0.1)
  tx = optimizer.make_optimizer(o, optax.constant_schedule(0.1), freeze=r"^stem/")
  p = _params()
  state = tx.init(p)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates["stem"]))
  assert all(float(jnp.abs(u).max()) > 0.0 for u in jax.tree.leaves(updates["head"]["kernel"]))
  n_state = sum(x.size for x in jax.tree.leaves(state))
  assert n_state < 2 * sum(x.size for x in jax.tree.leaves(p["head"])) + 10  # Adam moments of the head only
  assert optimizer.frozen_count(p, r"^stem/") == (3 * 3 * 3 * 8 + 16, 3 * 3 * 3 * 8 + 16 + 36)


# ---- the train step ----------------------------------------------------------------------------

def _step_setup(accum=1, ema=0.0, **optim_kw):
  model = create_model("nano", num_classes=12, act="silu", attn="eca")
  o = _optim(name="sgd", lr=0.05, weight_decay=0.0, agc_clip=0.0, **optim_kw)
  sched = optax.constant_schedule(o.lr)
  tx = optimizer.make_optimizer(o, sched)
  state = steps.init_state(model, tx, image_size=32, seed=0, ema=ema > 0)
  fn = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.sigmoid_bce, schedule=sched,
                                 accum_steps=accum, ema_decay=ema))
  rng = np.random.default_rng(1)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3)), jnp.float32),
           "labels": jnp.asarray(rng.random((8, 12)) < 0.3, jnp.float32)}
  return state, fn, batch


def test_gradient_accumulation_equals_the_full_batch_update():
  # drop_path is 0 in 'nano' by default and NFNets have no batch statistics, so 4 micro-batches
  # of 2 give exactly the mean gradient of the batch of 8.
  s1, f1, batch = _step_setup(accum=1)
  s4, f4, _ = _step_setup(accum=4)
  a, stats_a = f1(s1, batch)
  b, stats_b = f4(s4, batch)
  np.testing.assert_allclose(stats_a["loss"], stats_b["loss"], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6), a.params, b.params)


def test_nonfinite_step_is_skipped_and_counted():
  state, fn, batch = _step_setup()
  bad = dict(batch, image=batch["image"].at[0, 0, 0, 0].set(jnp.nan))
  after, stats = fn(state, bad)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), state.params, after.params)
  assert int(after.skipped_steps) == 1 and float(stats["nonfinite"]) == 1.0 and int(after.step) == 1
  good, stats = fn(after, batch)
  assert int(good.skipped_steps) == 1 and float(stats["nonfinite"]) == 0.0
  assert not np.allclose(jax.tree.leaves(good.params)[0], jax.tree.leaves(after.params)[0])


def test_ema_follows_the_params_with_warmup_decay():
  state, fn, batch = _step_setup(ema=0.999)
  init = state.params
  after, _ = fn(state, batch)
  d = min(0.999, 1.0 / 10.0)  # step 0: (1 + 0) / (10 + 0)
  jax.tree.map(lambda e, p0, p1: np.testing.assert_allclose(e, d * p0 + (1 - d) * p1, rtol=1e-5, atol=1e-7),
               after.ema_params, init, after.params)
  assert after.eval_params() is after.ema_params


def test_fsdp_state_is_sharded_and_steps_like_replicated():
  """Params, optimizer moments and EMA split over 'fsdp'; the update equals the replicated one."""
  model = create_model("nano", num_classes=12, act="silu", attn="eca")
  o = _optim(name="adamw", lr=1e-3, agc_clip=0.01)
  sched = optax.constant_schedule(o.lr)
  tx = optimizer.make_optimizer(o, sched)
  init_fn = functools.partial(steps.init_state, model, tx, image_size=32, seed=0, ema=True)
  abstract = jax.eval_shape(init_fn)
  rng = np.random.default_rng(1)
  batch = {"image": rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8),
           "labels": (rng.random((16, 12)) < 0.3).astype(np.float32)}
  results = {}
  for mode, mesh_axes in (("replicated", [("data", 8), ("fsdp", 1)]), ("fsdp", [("data", 2), ("fsdp", 4)])):
    mesh = sharding.make_mesh(mesh_axes)
    sh = sharding.state_shardings(abstract, sharding.param_shardings(abstract_params(model), mesh, sharding.RULE_SETS[mode]), mesh)
    state = jax.jit(init_fn, out_shardings=sh)()
    fn = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.sigmoid_bce, schedule=sched,
                                   ema_decay=0.99),
                 in_shardings=(sh, sharding.batch_sharding(mesh)), out_shardings=(sh, sharding.replicated(mesh)),
                 donate_argnums=(0,))
    state, _ = fn(state, sharding.global_batch(batch, mesh))
    results[mode] = state
  fsdp = results["fsdp"]
  flat = traverse_util.flatten_dict(fsdp.params)
  split = [k for k, v in flat.items() if not v.sharding.is_fully_replicated]
  assert len(split) > len(flat) // 2, "most params should be split over 'fsdp'"
  big = max(flat.values(), key=lambda v: v.size)
  assert big.addressable_shards[0].data.size == big.size // 4
  # Adam's moments and the EMA are split exactly like their params.
  mu = traverse_util.flatten_dict(fsdp.opt_state[1][0].mu)  # chain(agc, adamw): adamw's ScaleByAdamState
  ema = traverse_util.flatten_dict(fsdp.ema_params)
  for k in split:
    assert mu[k].sharding == flat[k].sharding and ema[k].sharding == flat[k].sharding
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(results["replicated"].params), jax.device_get(fsdp.params))
