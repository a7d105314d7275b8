"""The trainer: config validation, one sharded step, checkpoint round trip, exact resumption."""
import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import demo
from sw_zoo import sharding
from sw_zoo.data import pipeline
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.models import create_model
from sw_zoo.train import config_check, losses, optimizer, steps
from sw_zoo.train.checkpointing import Checkpointer, abstract_with_shardings
from sw_zoo.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  from data_prep import synthetic

  out = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(out, num_train=96, num_val=20, image_size=32, seed=1)
  return out


def tiny_config(data_dir, **overrides):
  c = demo.get_config()
  c.data.dir = data_dir
  c.data.synthetic.enabled = False
  c.data.image_size = 32
  c.batch_size = 16
  c.total_epochs = 0.0
  c.total_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint.every_steps = 3
  c.checkpoint.async_save = False
  c.optim.schedule = "constant"
  c.optim.warmup_epochs = 0.0
  c.wandb.mode = "disabled"
  return set_keys(c, overrides)


def set_keys(c, values: dict):
  """Sets dotted config keys ('optim.lr') as `--config.optim.lr=...` would."""
  for key, value in values.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def test_config_errors_name_every_bad_key(tiny_data):
  c = tiny_config(tiny_data)
  c.optim.name = "sgdd"
  c.eval.threshold = 1.5
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(c)
  assert "config.optim.name = 'sgdd'" in str(err.value)
  assert "config.eval.threshold = 1.5" in str(err.value)


def test_shipped_configs_validate():
  from configs import l2_silu_eca

  for cfg in (demo.get_config(), demo.get_config("quick"), l2_silu_eca.get_config(), l2_silu_eca.get_config("runlocal")):
    config_check.validate(cfg)


def test_l2_silu_eca_builds_at_384():
  from configs import l2_silu_eca

  c = l2_silu_eca.get_config()
  model = create_model(c.model.name, num_classes=9083, act=c.model.act, attn=c.model.attn, dtype=jnp.bfloat16)
  out = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 384, 384, 3)), train=False))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(out))
  assert out["params"]["head"]["kernel"].shape[-1] == 9083
  # timm's eca_nfnet_l2 has 56.72M params at 1000 classes; 8083 more tags add 8083 * (3072 + 1).
  assert abs(n - (56.72e6 + 8083 * 3073)) < 0.01e6


def _setup(c, mesh):
  model = create_model(c.model.name, num_classes=c.num_labels, act=c.model.act, attn=c.model.attn)
  schedule = optimizer.make_schedule(c.optim, 10, 0)
  tx = optimizer.make_optimizer(c.optim, schedule)
  init_fn = functools.partial(steps.init_state, model, tx, image_size=c.data.image_size, seed=0)
  abstract = jax.eval_shape(init_fn)
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  state = jax.jit(init_fn, out_shardings=shardings)()
  step_fn = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.sigmoid_bce, schedule=schedule),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  return abstract, shardings, state, step_fn


def test_one_sharded_train_step_on_8_devices(tiny_data):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  c = tiny_config(tiny_data)
  c.num_labels = 70
  _, _, state, step_fn = _setup(c, mesh)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
           "labels": (rng.random((16, 70)) < 0.1).astype(np.float32)}
  gbatch = sharding.global_batch(batch, mesh)
  assert gbatch["image"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert len(gbatch["image"].addressable_shards) == 8
  assert gbatch["image"].addressable_shards[0].data.shape == (2, 32, 32, 3)
  before = jax.device_get(state.params)
  state, stats = step_fn(state, gbatch)
  state, stats2 = step_fn(state, gbatch)
  assert int(state.step) == 2
  assert np.isfinite(float(stats["loss"])) and float(stats2["loss"]) < float(stats["loss"])
  after = jax.device_get(state.params)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
  assert any(jax.tree.leaves(changed))
  # Parameters stay replicated on every device of the mesh.
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_checkpoint_round_trip_restores_state_and_data_iterator(tiny_data, tmp_path):
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)])
  c = tiny_config(tiny_data)
  c.num_labels = 70
  abstract, shardings, state, step_fn = _setup(c, mesh)
  make_iter = lambda: iter(pipeline.make_train_dataset(tiny_data, global_batch_size=16, image_size=32, seed=3,
                                                       process_index=0, process_count=1, num_threads=1))
  it = make_iter()
  for _ in range(2):
    next(it)
  ckpt = Checkpointer(str(tmp_path), every_steps=1, max_to_keep=2, async_save=False)
  assert ckpt.save(2, state, it)
  ckpt.wait()
  expected_next = next(it)

  fresh = make_iter()
  step, restored = ckpt.restore(abstract_with_shardings(abstract, shardings), fresh)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))
  got_next = next(fresh)
  np.testing.assert_array_equal(got_next["image"], expected_next["image"])
  np.testing.assert_array_equal(got_next["labels"], expected_next["labels"])
  ckpt.close()


def test_resumed_run_matches_uninterrupted_run(tiny_data, tmp_path):
  full = train_and_evaluate(tiny_config(tiny_data), str(tmp_path / "full"))
  assert full["step"] == 6 and not full["interrupted"]

  # Stop after 3 steps (as if preempted right after the step-3 checkpoint), then rerun to 6.
  part = train_and_evaluate(tiny_config(tiny_data, total_steps=3), str(tmp_path / "resumed"))
  assert part["step"] == 3
  resumed = train_and_evaluate(tiny_config(tiny_data), str(tmp_path / "resumed"))
  assert resumed["step"] == 6

  def final_params(workdir):
    ckpt = Checkpointer(workdir, every_steps=1, max_to_keep=2)
    assert ckpt.latest_step() == 6
    params = ckpt.restore_arrays(6)["params"]
    ckpt.close()
    return params

  a, b = final_params(str(tmp_path / "full")), final_params(str(tmp_path / "resumed"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), a, b)
  assert resumed["micro_f1"] == pytest.approx(full["micro_f1"], abs=1e-6)
  lines = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert [l["step"] for l in lines if "train/loss" in l] == [2, 3, 4, 6]


@pytest.mark.slow
def test_sigint_saves_and_rerun_resumes(tiny_data, tmp_path):
  """The demo's promise: Ctrl-C saves a checkpoint, and the same command resumes from it."""
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "sw_zoo.train", "--config", os.path.join(REPO, "configs/demo.py:quick"),
         "--workdir", workdir, f"--config.data.dir={tiny_data}", "--config.data.synthetic.enabled=False",
         "--config.data.image_size=32", "--config.batch_size=16", "--config.total_steps=400",
         "--config.log_every_steps=5", "--config.checkpoint.every_steps=1000", "--config.wandb.mode=disabled"]
  env = {**os.environ, "XLA_FLAGS": "", "WANDB_MODE": "disabled"}
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output = []
  deadline = time.time() + 240
  for line in proc.stdout:
    output.append(line)
    if line.startswith("step ") and "/400" in line and time.time() < deadline:
      proc.send_signal(signal.SIGINT)
      break
  rest, _ = proc.communicate(timeout=240)
  text = "".join(output) + rest
  assert proc.returncode == 130, text
  stopped = [l for l in text.splitlines() if l.startswith("Stopped by SIGINT at step ")]
  assert stopped, text
  stop_step = int(stopped[0].split("at step ")[1].split("/")[0])
  assert 5 <= stop_step < 400

  cmd_resume = [a if a != "--config.total_steps=400" else f"--config.total_steps={stop_step + 5}" for a in cmd]
  done = subprocess.run(cmd_resume, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
  assert done.returncode == 0, done.stdout + done.stderr
  assert f"Resumed from checkpoint at step {stop_step}" in done.stdout
  assert f"Final (step {stop_step + 5})" in done.stdout


def test_resuming_with_a_different_model_names_the_checkpoint(tiny_data, tmp_path):
  train_and_evaluate(tiny_config(tiny_data, total_steps=3), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"checkpoints/3 does not match this config"):
    train_and_evaluate(tiny_config(tiny_data, **{"model.name": "nano"}), str(tmp_path / "run"))


def test_bad_augment_op_is_named(tiny_data):
  c = tiny_config(tiny_data)
  c.data.augment_spec.ops = "flip,zoom"
  with pytest.raises(config_check.ConfigError, match=r"config.data.augment_spec: .*zoom"):
    config_check.validate(c)


def test_recipe_options_train_end_to_end(tiny_data, tmp_path):
  """MixUp + CutMix, rare-tag loss weights, repeat-factor over-sampling and the letterbox/rrc/
  rotate/cutout augmentation all run through the real loop."""
  c = tiny_config(tiny_data, total_steps=2, eval_every_steps=0)
  c.mix.mixup_alpha, c.mix.cutmix_alpha = 0.2, 1.0
  c.loss_weights.method = "inverse_sqrt"
  c.data.repeat_factor_threshold = 0.3
  c.data.augment_spec.ops = "letterbox,rrc,flip,rotate,cutout"
  result = train_and_evaluate(c, str(tmp_path / "run"))
  assert result["step"] == 2 and 0.0 <= result["micro_f1"] <= 1.0
  losses_logged = [json.loads(l)["train/loss"] for l in open(tmp_path / "run" / "metrics.jsonl") if "train/loss" in l]
  assert losses_logged and all(np.isfinite(losses_logged))


# ---- Early stopping ---------------------------------------------------------------------------


def test_early_stop_tracker_counts_patience_and_survives_a_restart(tmp_path):
  from sw_zoo.train.early_stop import EarlyStop

  t = EarlyStop.load(str(tmp_path), metric="macro_f1", patience=2, min_delta=0.01)
  assert not t.update(10, {"macro_f1": 0.50, "micro_f1": 0.9})  # first: the best
  assert not t.update(20, {"macro_f1": 0.505, "micro_f1": 0.9})  # +0.005 <= min_delta: no gain
  t.save()
  again = EarlyStop.load(str(tmp_path), metric="macro_f1", patience=2, min_delta=0.01)
  assert (again.best, again.best_step, again.since_best) == (0.5, 10, 1)  # where it left off
  assert again.update(30, {"macro_f1": 0.49, "micro_f1": 0.9}) and again.stopped_at == 30
  other = EarlyStop.load(str(tmp_path), metric="micro_f1", patience=2, min_delta=0.01)
  assert other.best_step is None and other.stopped_at is None  # another metric starts over
  with pytest.raises(ValueError, match="early_stop.metric"):
    EarlyStop.load(str(tmp_path), metric="f1", patience=2, min_delta=0.0)


@pytest.mark.slow
def test_early_stopping_ends_with_the_best_checkpoint_and_stays_stopped(tiny_data, tmp_path, capsys):
  from tests.test_bundle import restore_params

  workdir = str(tmp_path / "early")
  # min_delta 1.0: no evaluation after the first can count as a gain, so with patience 1 the
  # run stops at its second evaluation (step 4 of 12) and ends with the better of the two.
  config = tiny_config(tiny_data, total_steps=12, eval_every_steps=2,
                       **{"early_stop.patience": 1, "early_stop.min_delta": 1.0})
  result = train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "Stopped early at step 4/12" in out, out
  evaluated = {line["step"]: line["val/micro_f1"] for line in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
               if "val/micro_f1" in line}
  best_step = max(evaluated, key=evaluated.get)
  assert set(evaluated) == {2, 4} and result["early_stopped_at"] == 4 and not result["interrupted"]
  assert result["step"] == best_step and result["micro_f1"] == pytest.approx(evaluated[best_step])
  bundle = bundle_lib.read_bundle(os.path.join(workdir, "bundle"))
  assert bundle.config["source"]["step"] == best_step
  best = restore_params(workdir, best_step)
  flat = traverse_util.flatten_dict(bundle.params, sep="/")
  assert flat.keys() == best.keys() and all(np.array_equal(flat[k], best[k]) for k in best)
  # The same command again does not train on: it ends with the same checkpoint.
  trained = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in line]
  again = train_and_evaluate(config, workdir)
  assert again["step"] == best_step and again["early_stopped_at"] == 4
  assert [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))
          if "train/loss" in line] == trained


def test_early_stopping_needs_a_kept_best_checkpoint(tiny_data, tmp_path):
  from sw_zoo.train.config_check import ConfigError

  config = tiny_config(tiny_data, **{"early_stop.patience": 2, "checkpoint.keep_best": 0})
  with pytest.raises(ConfigError, match="needs config.checkpoint.keep_best >= 1"):
    train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


# ---- Time budget ------------------------------------------------------------------------------


def test_budget_plan_leaves_room_for_evaluations_the_final_one_and_a_recompile():
  from sw_zoo.train import budget

  # 600 s x 0.95 - 100 spent - 20 recompile - 10 final eval = 440 s; each step 1 s + 10 s / 10 steps.
  assert budget.plan_steps(budget_s=600, elapsed_s=100, step_s=1.0, eval_s=10.0, eval_every=10, steps_done=6,
                           recompile_s=20) == 6 + 220
  # Already over budget: one more step, so the schedule still ends.
  assert budget.plan_steps(budget_s=60, elapsed_s=100, step_s=1.0, eval_s=10.0, eval_every=10, steps_done=6,
                           recompile_s=20) == 7


@pytest.mark.slow
def test_a_budget_run_plans_its_steps_completes_its_schedule_and_resumes_the_plan(tiny_data, tmp_path, capsys):
  from sw_zoo.train import budget

  workdir = str(tmp_path / "budget")
  # total_steps 1000 would take far longer than the budget: the plan replaces it.
  config = tiny_config(tiny_data, total_steps=1000, eval_every_steps=8, log_every_steps=1,
                       **{"budget_minutes": 1.0, "optim.schedule": "cosine", "optim.warmup_steps": 2,
                          "checkpoint.every_steps": 1000})
  result = train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  plan = budget.load(workdir)
  assert "Planned the run for its budget 1 min" in out, out
  # Timed: 5 steps after the first, then more until 2% of the budget (at least 5 more).
  assert plan is not None and plan.decided_at_step >= 1 + 2 * budget.CALIBRATION_STEPS
  assert plan.decided_at_step < plan.total_steps < 1000
  # Revised once a third of the way in, when that leaves enough steps to time.
  assert plan.replanned == (plan.replan_at > 0) and plan.warmup_steps <= max(plan.decided_at_step, plan.total_steps)
  assert result["step"] == plan.total_steps and not result["interrupted"]
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  lrs = {line["step"]: line["train/lr"] for line in logged if "train/lr" in line}
  # The cosine schedule of the planned total ran (nearly) to its end at the last step.
  assert max(lrs) == plan.total_steps and lrs[plan.total_steps] < 0.05 * config.optim.lr
  # Rerun: the saved plan stands; nothing is trained again.
  again = train_and_evaluate(config, workdir)
  assert again["step"] == plan.total_steps and "Planned the run" not in capsys.readouterr().out
