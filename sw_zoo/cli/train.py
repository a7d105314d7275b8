"""`sw-zoo train` (also `python -m sw_zoo.train`): --config configs/demo.py --workdir runs/demo [--config.x.y=v]

With config.data.synthetic.enabled and no dataset in config.data.dir yet, the built-in synthetic
dataset is generated there first (process 0 writes; the others wait), then training starts.

Multi-host: every process runs the same command with `--multihost`, which calls
jax.distributed.initialize() before anything touches devices. On a TPU pod (or under Slurm /
Open MPI) JAX finds the coordinator, process count and process id itself; elsewhere (several
processes on one machine, plain VMs) pass them:

  python -m sw_zoo.train ... --multihost --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0     # and --process_id=1 on the other

or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. On CPU the processes
exchange collectives over gloo (TCP).
"""
from __future__ import annotations

import os
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from sw_zoo.cli.common import init_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (file.py or file.py:args).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, eval_summary.json. "
                               "Rerunning with the same workdir resumes.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-node GPU, "
                               "several CPU processes).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator service (default: "
    "$JAX_COORDINATOR_ADDRESS, else detected by JAX on TPU / Slurm / Open MPI). Implies --multihost.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (default: $JAX_NUM_PROCESSES, else detected). Implies --multihost.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0 .. num_processes - 1 (default: $JAX_PROCESS_ID, else "
    "detected). Implies --multihost.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_INTERRUPTED = 130


def distributed_args() -> dict[str, object] | None:
  """jax.distributed.initialize() keyword arguments from the flags and the environment, or None
  for a single-process run. Unset values are left to JAX's cluster auto-detection."""
  def pick(flag, env: str, kind):
    if flag.value is not None:
      return flag.value
    value = os.environ.get(env)
    return kind(value) if value not in (None, "") else None

  args = {"coordinator_address": pick(_COORDINATOR, "JAX_COORDINATOR_ADDRESS", str),
          "num_processes": pick(_NUM_PROCESSES, "JAX_NUM_PROCESSES", int),
          "process_id": pick(_PROCESS_ID, "JAX_PROCESS_ID", int)}
  explicit = any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID))
  if not (_MULTIHOST.value or explicit):
    return None
  return {k: v for k, v in args.items() if v is not None}


def ensure_synthetic_dataset(config) -> None:
  """Generates the built-in dataset into config.data.dir when the config asks for it and it is
  not complete yet (dataset.json is written last, so its presence means complete).

  A data dir that holds anything else (a user's shards, an interrupted `prepare`) is refused
  with OutputRefused naming it, before anything is written: the synthetic flag must never turn
  into "overwrite my data"."""
  import jax
  from etils import epath

  from sw_zoo import run_dir
  from sw_zoo.data.dataset_info import DATASET_INFO_FILENAME

  if not config.data.synthetic.enabled:
    return
  data_dir = run_dir.absolute(config.data.dir)
  marker = epath.Path(data_dir) / DATASET_INFO_FILENAME

  def generate():
    from data_prep import synthetic

    s = config.data.synthetic
    if jax.process_index() == 0:
      print(f"Generating the synthetic dataset in {data_dir} (first run only) ...", flush=True)
    synthetic.generate(data_dir, num_train=s.num_train, num_val=s.num_val, image_size=s.image_size,
                       seed=s.seed, drop_tag_fraction=s.drop_tag_fraction,
                       box=s.get("box", False),  # (configs saved before the keys existed)
                       correlated_noise=s.get("correlated_noise", 0.0))

  if not marker.exists():
    from data_prep import synthetic

    # Every process checks (same verdict on a shared disk), so they all fail together instead
    # of the others waiting at the barrier below for a process 0 that gave up.
    synthetic.check_output(data_dir)
  if jax.process_index() == 0 and not marker.exists():
    generate()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    # Every process meets here, including those that already saw dataset.json: a process that
    # skipped the barrier would enter the next collective while process 0 still waits.
    multihost_utils.sync_global_devices("synthetic dataset ready")
    if not marker.exists():  # hosts with their own disks; the generator is deterministic
      generate()


def _main(argv):
  del argv
  from absl import logging

  if not flags.FLAGS["verbosity"].present:
    # Orbax and grain log every save at INFO; the loop prints what a user needs.
    logging.set_verbosity(logging.WARNING)

  dist = distributed_args()
  if dist is not None:
    init_distributed(**dist)
  from sw_zoo.train import config_check, recipe

  # configs/own_data.py leaves settings to the recipe: chosen (and printed) before the checks.
  record = recipe.resolve(_CONFIG.value, _WORKDIR.value)
  config_check.validate(_CONFIG.value)  # every bad key before any file is written
  ensure_synthetic_dataset(_CONFIG.value)
  from sw_zoo.train.loop import train_and_evaluate

  result = train_and_evaluate(_CONFIG.value, _WORKDIR.value, recipe_record=record)
  if result.get("interrupted"):
    sys.exit(EXIT_INTERRUPTED)


def _load_config_file(spec: str) -> Any:
  """configs/x.py[:arg] -> its get_config(arg), as ml_collections' --config flag loads it."""
  import importlib.util

  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such file")
  module_spec = importlib.util.spec_from_file_location("_sw_zoo_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def check_overrides(argv: list[str]) -> None:
  """Reports every unknown `--config.KEY` at once (with suggestions) before absl parses the flags,
  which would stop at the first one with a long traceback."""
  config_path, keys = None, []
  for i, arg in enumerate(argv):
    if arg.startswith("--config."):
      keys.append(arg[len("--config."):].split("=", 1)[0])
    elif arg.startswith("--config="):
      config_path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      config_path = argv[i + 1]
  if config_path and keys:
    from sw_zoo.train.config_check import check_override_keys

    check_override_keys(_load_config_file(config_path), keys)


def main(argv: list[str] | None = None) -> int:
  """`sw-zoo train ARGS`: absl parses the flags (config overrides included) and runs training."""
  argv = list(sys.argv[1:] if argv is None else argv)
  check_overrides(argv)
  app.run(_main, argv=["sw-zoo train", *argv])
  return 0
