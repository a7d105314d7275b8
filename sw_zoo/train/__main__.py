"""Entry point: python -m sw_zoo.train --config configs/demo.py --workdir runs/demo [--config.x.y=v]

Multi-host (TPU pod): every worker runs the same command; `--multihost` (or the TPU environment
being detected by JAX) calls jax.distributed.initialize() before anything touches devices.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (file.py or file.py:args).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, eval_summary.json. "
                               "Rerunning with the same workdir resumes.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_INTERRUPTED = 130


def main(argv):
  del argv
  import jax
  from absl import logging

  if not flags.FLAGS["verbosity"].present:
    # Orbax and grain log every save at INFO; the loop prints what a user needs.
    logging.set_verbosity(logging.WARNING)

  if _MULTIHOST.value:
    jax.distributed.initialize()
  from sw_zoo.train.loop import train_and_evaluate

  result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result.get("interrupted"):
    sys.exit(EXIT_INTERRUPTED)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
