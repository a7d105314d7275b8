"""Profiles of a training window, the input-wait fraction, and rematerialisation (issue 14)."""
import glob
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sw_zoo import storage
from sw_zoo.data import pipeline
from sw_zoo.models import create_model
from sw_zoo.models.spec import remat_compiler_options, spec_from_run_config, training_options
from sw_zoo.train import config_check, losses
from sw_zoo.train.loop import train_and_evaluate
from sw_zoo.train.profiling import StepProfiler
from sw_zoo.train.throughput import StepTimer
from tests.test_train import tiny_config, tiny_data  # noqa: F401  (tiny_data is a fixture)

SLOW_NEXT_S = 0.5  # well above a tiny step on a loaded 2-core machine, so the wait dominates


def _short_run(data_dir, **overrides):
  """4 steps, two log windows, no evaluation or checkpoint inside the loop: the second window
  times steps alone (the first includes compilation)."""
  return tiny_config(data_dir, **{"total_steps": 4, "log_every_steps": 2, "eval_every_steps": 0,
                                  "checkpoint.every_steps": 100, **overrides})


def _input_waits(workdir):
  return [json.loads(line)["train/input_wait"] for line in open(os.path.join(workdir, "metrics.jsonl"))
          if "train/input_wait" in line]


@pytest.fixture(scope="module")
def profiled_run(tiny_data, tmp_path_factory):
  """A normal tiny run with steps 1-2 profiled (step 0 compiles)."""
  workdir = str(tmp_path_factory.mktemp("profiled"))
  result = train_and_evaluate(_short_run(tiny_data, **{"profile.steps": 2, "profile.skip_steps": 1}), workdir)
  return workdir, result


@pytest.mark.slow
def test_profile_window_writes_a_trace(profiled_run):
  workdir, result = profiled_run
  assert result["step"] == 4
  runs = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*"))
  assert len(runs) == 1, runs
  assert glob.glob(os.path.join(runs[0], "*.xplane.pb"))  # TensorBoard / XProf
  assert os.path.getsize(os.path.join(runs[0], "perfetto_trace.json.gz")) > 0  # ui.perfetto.dev


@pytest.mark.slow
def test_input_wait_is_logged_and_a_slow_pipeline_shows_it(profiled_run, tiny_data, tmp_path, monkeypatch):
  """Each next() on the training iterator sleeps SLOW_NEXT_S: the host then spends most of a
  window waiting for input. This run also trains with remat=True (the trainer's remat path end to
  end, CPU compiler options included) and without a profile, which must leave no profile dir."""
  normal_workdir, _ = profiled_run
  normal = _input_waits(normal_workdir)
  assert len(normal) == 2 and all(0.0 <= w <= 1.0 for w in normal)

  make = pipeline.make_train_dataset

  def slow_dataset(*args, **kwargs):
    return make(*args, **kwargs).map(lambda batch: (time.sleep(SLOW_NEXT_S), batch)[1])

  monkeypatch.setattr(pipeline, "make_train_dataset", slow_dataset)
  workdir = str(tmp_path / "slow")
  result = train_and_evaluate(_short_run(tiny_data, **{"model.remat": True}), workdir)
  slow = _input_waits(workdir)
  assert len(slow) == 2 and all(0.0 <= w <= 1.0 for w in slow)
  # The second window has no compilation in it: two SLOW_NEXT_S waits plus two fast steps.
  assert slow[-1] > 0.5 and slow[-1] > normal[-1], (slow, normal)
  assert 0.0 <= result["train_input_wait"] <= 1.0
  assert not os.path.exists(os.path.join(workdir, "profile"))
  losses_logged = [json.loads(l)["train/loss"] for l in open(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in l]
  assert all(np.isfinite(losses_logged))


def _profile_cfg(steps, skip_steps):
  return ml_collections.ConfigDict({"steps": steps, "skip_steps": skip_steps, "all_processes": False})


def _run_steps(profiler, n):
  double = jax.jit(lambda x: x * 2)
  x = jnp.ones(4)
  for step in range(n):
    with profiler.step(step):
      x = double(x)
    profiler.step_done(step + 1, x)
  profiler.close(n, x)


def test_remote_workdir_is_traced_locally_then_uploaded(tmp_path, monkeypatch):
  """A gs:// workdir: the trace goes to a local temporary directory, then storage.upload_tree
  copies the run to <workdir>/profile/plugins/profile/<timestamp> (here the 'store' is a local
  directory that storage.is_remote is told to treat as remote, and the upload a copy)."""
  workdir = str(tmp_path / "bucket" / "run")
  monkeypatch.setattr(storage, "is_remote", lambda path: str(path).startswith(workdir))
  uploads = []
  monkeypatch.setattr(storage, "upload_tree",
                      lambda src, dest: (uploads.append((src, dest)), shutil.copytree(src, dest)))
  logs = []
  _run_steps(StepProfiler(_profile_cfg(2, 1), workdir, first_step=0, log=logs.append), 4)
  (src, dest), = uploads
  assert dest.startswith(os.path.join(workdir, "profile", "plugins", "profile", ""))
  assert glob.glob(os.path.join(dest, "*.xplane.pb")) and os.path.exists(os.path.join(dest, "perfetto_trace.json.gz"))
  assert not os.path.exists(src)  # the local temporary copy is removed
  assert len(logs) == 1 and dest in logs[0] and "tensorboard --logdir" in logs[0] and "ui.perfetto.dev" in logs[0]


def test_a_run_ending_before_the_window_says_so(tmp_path):
  logs = []
  _run_steps(StepProfiler(_profile_cfg(2, 10), str(tmp_path), first_step=0, log=logs.append), 3)
  assert len(logs) == 1 and logs[0].startswith("No profile written") and "steps 10..11" in logs[0]
  assert not os.path.exists(tmp_path / "profile")


def test_step_timer_bills_waits_and_leaves_out_pauses():
  now = [0.0]
  timer = StepTimer(batch_size=10, first_step=0, clock=lambda: now[0])
  for _ in range(2):  # first window: 2 steps, each 1 s waiting for input + 1 s computing
    with timer.waiting_for_input():
      now[0] += 1.0
    now[0] += 1.0
    timer.step()
  first = timer.close_window(2)
  assert first.images_per_s == pytest.approx(5.0) and first.input_wait == pytest.approx(0.5)
  with timer.waiting_for_input():
    now[0] += 1.0
  now[0] += 3.0
  with timer.paused():  # an evaluation: neither throughput nor input wait
    now[0] += 100.0
  timer.step()
  second = timer.close_window(3)
  assert second.steps_per_s == pytest.approx(0.25) and second.input_wait == pytest.approx(0.25)
  # The run's figures leave out the first window (compilation).
  assert timer.run_images_per_s() == pytest.approx(2.5) and timer.run_input_wait() == pytest.approx(0.25)


def test_profile_and_remat_keys_are_validated(tiny_data):
  c = tiny_config(tiny_data, **{"profile.steps": -1, "profile.skip_steps": -2})
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(c)
  assert "config.profile.steps = -1" in str(err.value)
  assert "config.profile.skip_steps = -2" in str(err.value)


def test_remat_reaches_the_model(tiny_data):
  c = tiny_config(tiny_data, **{"model.remat": True})
  assert training_options(c) == {"drop_path_rate": 0.0, "remat": True}
  assert spec_from_run_config(c, 7).create(**training_options(c)).remat
  assert "remat" not in spec_from_run_config(c, 7).to_json()  # bundles rebuild without it


@pytest.mark.slow
def test_remat_lowers_peak_temporary_memory_with_identical_loss_and_grads():
  """value_and_grad of the BCE loss of `tiny` (4 blocks) on 8 x 64 px images, compiled with and
  without remat as the trainer compiles its step (remat_compiler_options)."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (8, 64, 64, 3)), jnp.uint8)
  labels = jnp.asarray(rng.random((8, 64)) < 0.1, jnp.float32)
  platform = jax.devices()[0].platform
  results = {}
  for remat in (False, True):
    model = create_model("tiny", num_classes=64, act="silu", attn="eca", remat=remat)
    params = jax.jit(lambda: model.init(jax.random.key(0), images[:1], train=False)["params"])()

    def loss_fn(p, model=model):
      return losses.sigmoid_bce(model.apply({"params": p}, images, train=True), labels).mean()

    compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile(
        compiler_options=remat_compiler_options(remat, platform))
    results[remat] = compiled.memory_analysis().temp_size_in_bytes, compiled(params)
  (plain_bytes, (plain_loss, plain_grads)), (remat_bytes, (remat_loss, remat_grads)) = results[False], results[True]
  print(f"temp_size_in_bytes: remat=False {plain_bytes}, remat=True {remat_bytes}")
  assert remat_bytes < 0.8 * plain_bytes, (plain_bytes, remat_bytes)
  assert float(remat_loss) == float(plain_loss)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain_grads, remat_grads)
