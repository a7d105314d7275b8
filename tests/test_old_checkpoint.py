"""A checkpoint written by older code still resumes.

tests/fixtures/run_974df1e is a run directory (config.json + checkpoints/4: train state and the
grain iterator state) written by commit 974df1e; see its README.md for how it was made. The
dataset is not shipped: the synthetic generator is deterministic, so it is regenerated here
with the same arguments. Only public entry points are used (the trainer, `sw-zoo` commands and
`sw_zoo.load_pretrained`), so the test survives moving modules around.
"""
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image, ImageDraw

import sw_zoo
from configs import demo
from sw_zoo import cli
from sw_zoo.train import train_and_evaluate
from tests.test_train import set_keys

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "run_974df1e")
FIXTURE_STEP = 4
RESUMED_STEPS = FIXTURE_STEP + 3
# What `sw-zoo synthetic` was given for the fixture's dataset (see the fixture's README.md).
DATASET_ARGS = ["--num-train", "64", "--num-val", "16", "--image-size", "32", "--seed", "0"]
# The --config.* overrides of configs/demo.py the fixture was trained with (besides data.dir
# and total_steps).
OVERRIDES = {
    "data.synthetic.enabled": False,
    "model.name": "nano",
    "data.image_size": 32,
    "batch_size": 8,
    "total_epochs": 0.0,
    "log_every_steps": 2,
    "checkpoint.every_steps": 3,
    "wandb.mode": "disabled",
}


def _get(tree, key):
  for part in key.split("."):
    tree = tree[part]
  return tree


def _config(data_dir, total_steps):
  return set_keys(demo.get_config(), {**OVERRIDES, "data.dir": data_dir, "total_steps": total_steps})


def _saved_state(step_dir):
  """The fixture's `state` item as host arrays, read with Orbax alone (no sw_zoo code)."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    return jax.device_get(checkpointer.restore(os.path.join(step_dir, "state")))
  finally:
    checkpointer.close()


def _assert_trees_equal(expected, actual):
  assert jax.tree.structure(expected) == jax.tree.structure(actual)
  jax.tree.map(np.testing.assert_array_equal, expected, jax.device_get(actual))


@pytest.mark.slow
def test_checkpoint_from_974df1e_resumes_and_exports(tmp_path, capsys):
  saved_config = json.load(open(os.path.join(FIXTURE, "config.json")))
  # The overrides here must be the ones the fixture was made with (its config.json records them).
  for key, value in OVERRIDES.items():
    assert _get(saved_config, key) == value, key
  assert saved_config["total_steps"] == FIXTURE_STEP
  built_model = _config("", 0).model.to_dict()
  assert saved_config["model"] == {k: built_model.get(k) for k in saved_config["model"]}

  data_dir = str(tmp_path / "data")
  assert cli.main(["synthetic", "--out", data_dir, *DATASET_ARGS, "--workers", "1", "--no-progress"]) == 0
  workdir = str(tmp_path / "run")
  shutil.copytree(FIXTURE, workdir, ignore=shutil.ignore_patterns("README.md"))
  saved = _saved_state(os.path.join(workdir, "checkpoints", str(FIXTURE_STEP)))
  assert int(saved["step"]) == FIXTURE_STEP
  capsys.readouterr()

  # 1. Resume with nothing left to train: the run evaluates and bundles the restored state as is,
  # so its bundle holds exactly the params the old code saved.
  # (config.json in the fixture names the old data dir; data.dir here points at the new one.)
  at_fixture = train_and_evaluate(_config(data_dir, FIXTURE_STEP), workdir)
  out = capsys.readouterr().out
  assert f"Resumed from checkpoint at step {FIXTURE_STEP}" in out, out
  assert at_fixture["step"] == FIXTURE_STEP and not at_fixture["interrupted"]
  restored = sw_zoo.load_pretrained(os.path.join(workdir, "bundle"))
  _assert_trees_equal(saved["params"], restored.bundle.params)

  # 2. Resume and train on: state and data iterator continue from the old checkpoint.
  result = train_and_evaluate(_config(data_dir, RESUMED_STEPS), workdir)
  out = capsys.readouterr().out
  assert f"Resumed from checkpoint at step {FIXTURE_STEP}" in out, out
  assert "Initialised" not in out, out
  assert result["step"] == RESUMED_STEPS and not result["interrupted"]
  for key in ("micro_f1", "macro_f1", "micro_precision", "micro_recall"):
    assert np.isfinite(result[key]) and 0.0 <= result[key] <= 1.0, (key, result[key])
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_steps = [line["step"] for line in logged if "train/loss" in line]
  # Only steps after the checkpoint ran (none was repeated from scratch), all with finite losses.
  assert train_steps and min(train_steps) > FIXTURE_STEP and max(train_steps) == RESUMED_STEPS, train_steps
  assert all(np.isfinite(line["train/loss"]) for line in logged if "train/loss" in line)
  # The data iterator went on from where the old checkpoint left it (one index per step).
  final_data = os.path.join(workdir, "checkpoints", str(RESUMED_STEPS), "data")
  iterator_states = [json.load(open(os.path.join(final_data, name)))
                     for name in sorted(os.listdir(final_data)) if name.endswith(".json")]
  assert [s.get("next_index") for s in iterator_states] == [RESUMED_STEPS], iterator_states
  trained = _saved_state(os.path.join(workdir, "checkpoints", str(RESUMED_STEPS)))
  assert int(trained["step"]) == RESUMED_STEPS
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(trained["params"])))

  # 3. sw-zoo export of the resumed run -> a bundle that loads and tags an image.
  bundle_dir = str(tmp_path / "bundle")
  assert cli.main(["export", workdir, "--out", bundle_dir]) == 0
  tagger = sw_zoo.load_pretrained(bundle_dir)
  _assert_trees_equal(trained["params"], tagger.bundle.params)
  image = Image.new("RGB", (48, 48), "white")
  ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill="red")
  scores = tagger.scores(image)
  assert scores.shape == (len(tagger.tags),) and np.all(np.isfinite(scores))
  assert np.all((scores >= 0) & (scores <= 1))
  prediction = tagger.predict(image)
  assert prediction.rating_tag is not None
