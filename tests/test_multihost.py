"""The trainer at pod scale, on one machine: two processes x two CPU devices form one 4-device
JAX cluster (coordinator on 127.0.0.1, gloo collectives), exactly as the hosts of a TPU pod do;
a signal reaching one worker stops both at the same step with a checkpoint, and the rerun
resumes. Also crash safety: a run killed with SIGKILL (no handler, async save possibly in
flight) restarts from its last complete checkpoint and ends where an uninterrupted run ends.

The per-process data order depends on the process count (each process shuffles its own slice),
so a 2-process run is compared with a 2-process run, not with a single process.
"""
import filecmp
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sw_zoo.train.checkpointing import Checkpointer
from sw_zoo.train.preemption import StopRequest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = dict(num_train=96, num_val=20, image_size=32, seed=1)
# One subprocess launch (imports + compiles on 2 shared cores) takes ~30-60 s.
LAUNCH_TIMEOUT = 420


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A persistent compilation cache shared by the launches of this module: a rerun of the same
  config loads its executables instead of compiling them again (JAX reads and writes it on
  process 0 only, so process 1 still compiles)."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  from data_prep import synthetic

  out = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.generate(out, **SYNTHETIC)
  return out


def overrides(data_dir, total_steps, **extra):
  """The run's config as `config.<key>` overrides of configs/demo.py (`--config.<key>=v`)."""
  o = {"data.dir": data_dir, "data.synthetic.enabled": False, "data.image_size": 32,
       "data.num_threads": 1, "data.prefetch": 2, "batch_size": 16, "total_epochs": 0.0,
       "total_steps": total_steps, "log_every_steps": 1, "eval_every_steps": 1000,
       "optim.schedule": "constant", "optim.warmup_epochs": 0.0, "wandb.mode": "disabled"}
  o.update(extra)
  return o


def config_flags(o):
  return [f"--config.{k}={v}" for k, v in o.items()]


def trainer_cmd(workdir, o, config="configs/demo.py"):
  return [sys.executable, "-m", "sw_zoo.train", "--config", os.path.join(REPO, config),
          "--workdir", workdir, *config_flags(o)]


def child_env(devices, cache_dir):
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             WANDB_MODE="disabled", PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=cache_dir)
  return env


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Cluster:
  """`n` trainer processes of one run (2 CPU devices each), output in <log_prefix>.p<i>.log.
  The coordinator address reaches process 0 by flag and the others by environment variables,
  so both ways of configuring a worker are exercised."""

  def __init__(self, workdir, o, log_prefix, cache_dir, n=2, config="configs/demo.py"):
    port = free_port()
    self.logs = [f"{log_prefix}.p{i}.log" for i in range(n)]
    self.procs = []
    for i in range(n):
      env = child_env(2, cache_dir)
      cmd = trainer_cmd(workdir, o, config)
      if i == 0:
        cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}", "--process_id=0"]
      else:
        cmd += ["--multihost"]
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
      with open(self.logs[i], "w") as out:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))

  def output(self, i=0):
    with open(self.logs[i]) as f:
      return f.read()

  def all_output(self):
    return "\n".join(f"----- process {i} -----\n{self.output(i)}" for i in range(len(self.procs)))

  def wait_for_line(self, pattern, timeout=LAUNCH_TIMEOUT):
    """Polls process 0's output for a line matching `pattern`; returns the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      m = re.search(pattern, self.output(0), re.M)
      if m:
        return m
      if any(p.poll() is not None for p in self.procs):
        break
      time.sleep(0.01)
    self.kill()
    pytest.fail(f"no line matching {pattern!r}\n{self.all_output()}")

  def wait(self, timeout=LAUNCH_TIMEOUT):
    deadline = time.time() + timeout
    try:
      for p in self.procs:
        p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"the cluster did not finish within {timeout} s\n{self.all_output()}")
    return [p.returncode for p in self.procs]

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.fixture
def cluster(compile_cache):
  """Starts `Cluster`s; whatever is still running when the test ends is killed."""
  started = []

  def start(workdir, o, log_prefix, config="configs/demo.py"):
    started.append(Cluster(workdir, o, log_prefix, compile_cache, config=config))
    return started[-1]

  yield start
  for c in started:
    c.kill()


def final_params(workdir, step):
  ckpt = Checkpointer(workdir, every_steps=1, max_to_keep=10)
  try:
    assert ckpt.latest_step() == step
    return ckpt.restore_arrays(step)["params"]
  finally:
    ckpt.close()


def assert_same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), a, b)


def sigkill_when(cmd, env, log_path, ready, poll=0.02):
  """Starts `cmd`, SIGKILLs it (no handler, no final save; an async save may be torn) once
  `ready()` is true, and returns its log; fails if it ended by itself first."""
  with open(log_path, "w") as out:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + LAUNCH_TIMEOUT
    while proc.poll() is None and time.time() < deadline and not ready():
      time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  log = open(log_path).read()
  assert proc.returncode == -signal.SIGKILL, log
  return log


def finalized_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_two_process_run_stops_on_one_workers_signal_and_resumes_exactly(tiny_data, cluster, tmp_path):
  total = 24
  # checkpoint.every_steps=5: the SIGINT stop (agreed at a multiple of 10) lands right after a
  # periodic save of that step. eval_every_steps=5: process 1 knows of its SIGINT before an
  # evaluation that process 0 does not know to skip; both must evaluate (or skip) together.
  common = {"checkpoint.every_steps": 5, "eval_every_steps": 5}

  # Uninterrupted reference; its dataset is generated by process 0 while process 1 waits.
  generated = str(tmp_path / "generated")
  full = cluster(str(tmp_path / "full"), overrides(
      generated, total, **common, **{"data.synthetic.enabled": True, "data.synthetic.num_train": 96,
                                     "data.synthetic.num_val": 20, "data.synthetic.image_size": 32,
                                     "data.synthetic.seed": 1}), str(tmp_path / "full"))
  assert full.wait() == [0, 0], full.all_output()
  text = full.output(0)
  assert "sw_zoo: 2 process(es), 4 device(s)" in text, text
  assert f"Final (step {total})" in text, text
  # Process 0 generated the whole dataset once (process 1 did not write into it half-way).
  for name in sorted(os.listdir(tiny_data)):
    if name.endswith(".array_record") or name == "selected_tags.csv":
      assert filecmp.cmp(os.path.join(generated, name), os.path.join(tiny_data, name), shallow=False), name
  # Every process saved its own data iterator state.
  data_dir = os.path.join(tmp_path, "full", "checkpoints", str(total), "data")
  assert sorted(f for f in os.listdir(data_dir) if f.endswith(".json")) == \
      ["process_0-of-2.json", "process_1-of-2.json"]

  # The same run on the pre-generated copy, stopped twice by a signal to process 1 only (as when
  # one TPU worker gets the maintenance notice): both processes must stop after the same step,
  # save it and exit 130, and each rerun resumes from there.
  workdir = str(tmp_path / "resumed")
  o = overrides(tiny_data, total, **common)

  # SIGTERM goes through JAX's preemption service: the stop comes a few steps later.
  part = cluster(workdir, o, str(tmp_path / "sigterm"))
  part.wait_for_line(rf"^step\s+1/{total}\b")
  part.procs[1].send_signal(signal.SIGTERM)
  assert part.wait() == [130, 130], part.all_output()
  stopped = re.search(r"^Stopped by SIGTERM \(preemption notice\) at step (\d+)/", part.output(0), re.M)
  assert stopped, part.all_output()
  first_stop = int(stopped.group(1))
  assert 1 <= first_stop < total - 6, part.all_output()
  assert finalized_steps(workdir)[-1] == first_stop

  # SIGINT is agreed every 10 steps (StopRequest.check_every): the stop comes at one of them.
  part = cluster(workdir, o, str(tmp_path / "sigint"))
  part.wait_for_line(rf"^step\s+{first_stop + 1}/{total}\b")
  part.procs[1].send_signal(signal.SIGINT)
  assert part.wait() == [130, 130], part.all_output()
  assert f"Resumed from checkpoint at step {first_stop}" in part.output(0), part.all_output()
  stopped = re.search(r"^Stopped by SIGINT on process 1 at step (\d+)/", part.output(0), re.M)
  assert stopped, part.all_output()
  second_stop = int(stopped.group(1))
  assert second_stop % 10 == 0 and first_stop < second_stop < total, part.all_output()
  assert "SIGINT received" in part.output(1), part.all_output()
  assert finalized_steps(workdir)[-1] == second_stop

  resumed = cluster(workdir, o, str(tmp_path / "resume"))
  assert resumed.wait() == [0, 0], resumed.all_output()
  assert f"Resumed from checkpoint at step {second_stop}" in resumed.output(0), resumed.all_output()
  assert f"Final (step {total})" in resumed.output(0), resumed.all_output()

  assert_same_params(final_params(str(tmp_path / "full"), total), final_params(workdir, total))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
  assert logged == list(range(1, total + 1))  # process 0 alone writes metrics, each step once


@pytest.mark.slow
def test_two_processes_take_one_recipe_and_one_time_plan(tiny_data, cluster, tmp_path):
  """configs/own_data.py with a time budget on two hosts: the recipe and the plan are decided
  from process 0's view and taken by both (a per-host decision would deadlock or split the run)."""
  workdir = str(tmp_path / "run")
  o = {"data.dir": tiny_data, "budget_minutes": 0.75, "model.name": "tiny", "data.num_threads": 1,
       "log_every_steps": 5, "wandb.mode": "disabled"}
  run = cluster(workdir, o, str(tmp_path / "own_data"), config="configs/own_data.py")
  assert run.wait() == [0, 0], run.all_output()
  first, second = run.output(0), run.output(1)
  assert "Recipe for 96 training images" in first and "Recipe for" not in second, run.all_output()
  plan = json.load(open(os.path.join(workdir, "budget.json")))
  assert f"Final (step {plan['total_steps']})" in first, run.all_output()
  assert json.load(open(os.path.join(workdir, "recipe.json")))["choices"]["batch_size"] % 4 == 0


@pytest.mark.slow
def test_sigkilled_run_restarts_from_last_complete_checkpoint(tiny_data, compile_cache, tmp_path):
  total = 40  # the kill must land well before the end, however fast steps are
  o = overrides(tiny_data, total, **{"checkpoint.every_steps": 2, "checkpoint.max_to_keep": 2,
                                     "checkpoint.async_save": True})
  env = child_env(2, compile_cache)
  workdir = str(tmp_path / "killed")
  log = sigkill_when(trainer_cmd(workdir, o), env, tmp_path / "killed.log",
                     lambda: [s for s in finalized_steps(workdir) if s >= 4])
  complete = finalized_steps(workdir)
  assert complete and 4 <= complete[-1] < total, (complete, log)
  # A save torn half-way leaves only its temporary directory (Orbax renames it when complete);
  # plant one for the next step if the kill did not leave one, to be sure it is never resumed.
  torn = os.path.join(workdir, "checkpoints", f"{complete[-1] + 2}.orbax-checkpoint-tmp")
  if not os.path.exists(torn):
    os.makedirs(os.path.join(torn, "state"))
    with open(os.path.join(torn, "state", "manifest.ocdbt"), "wb") as f:
      f.write(b"\0" * 16)

  def run(workdir):
    done = subprocess.run(trainer_cmd(workdir, o), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Final (step {total})" in done.stdout, done.stdout + done.stderr
    return done.stdout

  assert f"Resumed from checkpoint at step {complete[-1]}" in run(workdir)
  # The torn directory was replaced by the step's real save, and rotated away like the others.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted([str(total - 2), str(total)])
  run(str(tmp_path / "uninterrupted"))  # same devices and config (and cached executables)
  assert_same_params(final_params(str(tmp_path / "uninterrupted"), total), final_params(workdir, total))


def test_checkpointer_skips_a_step_already_saved_and_reads_host_arrays(tmp_path):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(2)}
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  next(it)
  ckpt = Checkpointer(str(tmp_path), every_steps=2, max_to_keep=2, async_save=True)
  assert ckpt.save(2, state, it)
  # The loop's stop path saves again with force=True right after a periodic save of that step.
  assert not ckpt.save(2, state, it, force=True)
  assert not ckpt.save(3, state, it)
  ckpt.wait()
  restored = ckpt.restore_arrays()
  ckpt.close()
  assert isinstance(restored["w"], np.ndarray)
  np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3))


def test_stop_request_single_process():
  previous = signal.getsignal(signal.SIGTERM)
  stop = StopRequest(check_every=10)
  try:
    assert not stop.should_stop(3) and stop.signal_name is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # the handler runs between bytecodes of the main thread
    assert stop.signal_name == "SIGTERM"
    assert stop.should_stop(3)  # a single process stops at once, not at a multiple of 10
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # a second signal, Ctrl-C: leave without saving
      time.sleep(0.01)
  finally:
    stop.restore()
  assert signal.getsignal(signal.SIGTERM) is previous
