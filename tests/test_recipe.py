"""configs/own_data.py and sw_zoo/train/recipe.py: settings chosen from the data and the hardware,
kept when the user sets them, saved for resumes; the freeze schedule and evaluation count they use."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from configs import own_data
from sw_zoo.train import budget, config_check, optimizer, recipe
from sw_zoo.train.loop import eval_period
from tests.test_train import REPO, set_keys, tiny_data  # noqa: F401  (fixture)

LAPTOP = recipe.Hardware("cpu", "cpu", 1, 2)
POD = recipe.Hardware("tpu", "TPU v4", 32, 240, 32.0)
GPUS = recipe.Hardware("gpu", "NVIDIA H100 80GB HBM3", 8, 64, 79.6)
SMALL_TPU = recipe.Hardware("tpu", "TPU v5 lite", 8, 100, 15.7)


def values(choices):
  return {k: v for k, (v, _) in choices.items()}


def test_every_key_is_chosen_with_a_reason():
  for hw in (LAPTOP, POD, GPUS):
    choices = recipe.choose(recipe.DataFacts(3000, 150, 20, 96), hw)
    assert set(choices) == set(recipe.KEYS)
    assert all(isinstance(why, str) and why for _, why in choices.values())
    assert all(isinstance(v, recipe.KEYS[k]) for k, (v, _) in choices.items()), choices


def test_a_small_folder_on_a_laptop_gets_the_cpu_model_at_its_own_size():
  v = values(recipe.choose(recipe.DataFacts(num_train=3000, num_val=150, num_tags=20, median_side=96), LAPTOP))
  assert v["model.name"] == "cpu_s" and v["model.dtype"] == "float32"
  assert v["data.image_size"] == 96  # never upsampled past the images
  assert v["data.num_threads"] == 2
  assert v["batch_size"] == 32  # 64 from 10k images on
  assert v["total_epochs"] == 100.0  # small sets get many passes
  # Large images are capped on a CPU; tiny sets get a smaller batch, so an epoch is >= 10 steps.
  v = values(recipe.choose(recipe.DataFacts(300, 30, 5, 800), LAPTOP))
  assert v["data.image_size"] == 128 and v["batch_size"] == 16


def test_accelerators_get_nfnet_l_by_dataset_size_and_scaled_batches():
  big = values(recipe.choose(recipe.DataFacts(3_000_000, 30_000, 9000, 900), POD))
  assert big["model.name"] == "l2" and big["model.dtype"] == "bfloat16"
  assert big["data.image_size"] == 320
  assert big["batch_size"] == 32 * 32 and big["total_epochs"] == 15.0  # L2: 32 per 32 GB chip
  assert big["optim.lr"] == 4e-3  # sqrt scaling, capped
  mid = values(recipe.choose(recipe.DataFacts(20_000, 1000, 300, 512), GPUS))
  assert mid["model.name"] == "l0" and mid["batch_size"] == 8 * 256 // 2 and mid["model.drop_path_rate"] == 0.2
  # (L0 fits 256 per 80 GB GPU, but 2048 would leave under 10 steps per epoch of 20k images.)
  assert mid["batch_size"] % GPUS.num_devices == 0
  # Less memory per chip, smaller per-device batches.
  small = values(recipe.choose(recipe.DataFacts(200_000, 1000, 3000, 512), SMALL_TPU))
  assert small["model.name"] == "l1" and small["batch_size"] == 8 * 16


def test_a_pretrained_start_fixes_the_model_lowers_the_lr_and_freezes_then_unfreezes():
  facts = recipe.DataFacts(3000, 150, 20, 96)
  scratch = values(recipe.choose(facts, LAPTOP))
  warm = values(recipe.choose(facts, LAPTOP, pretrained=("l0", "silu", "eca")))
  assert (warm["model.name"], warm["model.act"], warm["model.attn"]) == ("l0", "silu", "eca")
  assert warm["optim.lr"] == pytest.approx(scratch["optim.lr"] / 3, rel=0.01)
  assert warm["init.freeze"] == recipe.PRETRAINED_FREEZE and 0 < warm["init.unfreeze_at"] < 1
  assert scratch["init.freeze"] == "" and scratch["init.unfreeze_at"] == 0.0


def test_choices_that_depend_on_a_key_the_user_set_follow_the_users_value():
  facts = recipe.DataFacts(3000, 150, 20, 96)
  v = values(recipe.choose(facts, LAPTOP, given={"batch_size": 256, "model.name": "l0"}))
  assert v["optim.lr"] == 4e-3  # for batch 256 (capped), not the recipe's 32
  assert v["model.drop_path_rate"] == 0.2  # l0's, not cpu_s's 0
  # A pretrained start with nothing frozen: no unfreeze step to schedule.
  v = values(recipe.choose(facts, LAPTOP, pretrained=("l0", "silu", "eca"), given={"init.freeze": ""}))
  assert v["init.unfreeze_at"] == 0.0


def test_own_data_config_leaves_only_recipe_keys_open_and_validates_once_resolved():
  c = own_data.get_config()
  assert recipe.open_keys(c) == list(recipe.KEYS)
  for key, (value, _) in recipe.choose(recipe.DataFacts(3000, 150, 20, 96), LAPTOP).items():
    set_keys(c, {key: value})
  c.data.dir = "data/mine"
  config_check.validate(c)


def test_resolve_keeps_what_the_user_set_and_a_resume_keeps_what_was_chosen(tiny_data, tmp_path, monkeypatch):  # noqa: F811
  c = set_keys(own_data.get_config(), {"data.dir": tiny_data, "batch_size": 8, "optim.lr": 0.01})
  lines = []
  record = recipe.resolve(c, str(tmp_path), log=lines.append)
  assert c.batch_size == 8 and c.optim.lr == 0.01  # set by the user: kept, not reported
  assert "batch_size" not in record["choices"] and "optim.lr" not in record["choices"]
  assert record["data"] == {"num_train": 96, "num_val": 20, "num_tags": 65, "median_side": 32}
  assert c.data.image_size == 64  # the smallest the recipe trains at
  assert "model.name = 'cpu_s'" in lines[0] and "set any of these with --config.KEY" in lines[0]
  assert not os.path.exists(tmp_path / recipe.RECIPE_FILE)  # written with the run's config, not before
  recipe.save(str(tmp_path), record)

  # A resume on other hardware continues with the saved choices.
  monkeypatch.setattr(recipe, "detect_hardware", lambda: POD)
  again = set_keys(own_data.get_config(), {"data.dir": tiny_data, "batch_size": 8, "optim.lr": 0.01})
  recipe.resolve(again, str(tmp_path), log=lines.append)
  assert again.model.name == "cpu_s" and again.to_dict() == c.to_dict()
  assert "resuming with the choices" in lines[-1]

  # Resuming with other inputs is refused, naming the saved file.
  other = set_keys(own_data.get_config("init=runs/elsewhere"), {"data.dir": tiny_data})
  with pytest.raises(ValueError, match=r"recipe.json: this run was planned for init.checkpoint=''"):
    recipe.resolve(other, str(tmp_path))

  empty = own_data.get_config()
  with pytest.raises(ValueError, match="config.data.dir is empty"):
    recipe.resolve(empty, str(tmp_path / "new"))


def test_freeze_schedule_holds_params_until_the_unfreeze_step():
  params = {"stem": {"kernel": jnp.ones((3, 3))}, "head": {"kernel": jnp.ones((3, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  optim = own_data.get_config().optim
  optim.lr = 0.1
  tx = optimizer.make_optimizer(optim, optax.constant_schedule(0.1), freeze="^stem/", unfreeze_step=2)
  state = tx.init(params)
  seen = []
  for _ in range(4):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    seen.append((float(params["stem"]["kernel"][0, 0]), float(params["head"]["kernel"][0, 0])))
  assert [s for s, _ in seen[:2]] == [1.0, 1.0] and seen[2][0] < 1.0 and seen[3][0] < seen[2][0]
  assert all(h < 1.0 for _, h in seen)
  c = set_keys(own_data.get_config(), {"init.unfreeze_at": 0.5, "init.freeze": ""})
  problems = []
  try:
    config_check.validate(c)
  except config_check.ConfigError as e:
    problems.append(str(e))
  assert "config.init.unfreeze_at=0.5 needs config.init.freeze" in problems[0]


def test_evaluation_count_spreads_passes_over_any_length_and_the_budget_counts_them():
  c = own_data.get_config()
  c.eval.count = 10
  assert eval_period(c, 1000, 30) == 100 and eval_period(c, 95, 30) == 10
  c.eval.count, c.eval_every_steps = 0, 0
  assert eval_period(c, 1000, 30) == 30
  # Ten passes of 6 s in a 10-minute budget: about 60 s less training than no evaluation at all.
  kw = dict(budget_s=600, elapsed_s=30, step_s=0.1, eval_s=6, steps_done=20, recompile_s=10)
  assert budget.plan_steps(**kw, eval_count=10) == 20 + int((600 * 0.95 - 30 - 10 - 6 - 9 * 6) / 0.1)
  # Calibration covers a share of the budget, however fast the first steps were.
  assert budget.more_calibration_steps(600, 0.1) == 120 and budget.more_calibration_steps(600, 60) == 5
  # The plan is revised a third of the way to its end, from time spent training since it was
  # made (evaluations and compiles taken out), unless that leaves too few steps to time.
  assert budget.replan_step(20, 320) == 120 and budget.replan_step(20, 40) == 0
  since = budget.Since(start=100.0, step=20)
  since.paused_s = 15.0
  assert since.step_s(now=135.0, step=220) == pytest.approx(0.1)


@pytest.mark.slow  # ~40 s: a short training run through the CLI
def test_own_data_through_the_cli_prints_and_keeps_its_recipe(tiny_data, tmp_path):  # noqa: F811
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "sw_zoo.train", "--config", os.path.join(REPO, "configs/own_data.py"),
         "--workdir", str(workdir), f"--config.data.dir={tiny_data}", "--config.total_steps=4",
         "--config.model.name=tiny", "--config.wandb.mode=disabled", "--config.checkpoint.async_save=False"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Recipe for 96 training images, 65 tags, ~32 px" in out.stdout
  saved = json.loads((workdir / recipe.RECIPE_FILE).read_text())
  assert "model.name" not in saved["choices"]  # set on the command line
  run_config = json.loads((workdir / "config.json").read_text())
  assert run_config["model"]["name"] == "tiny" and run_config["batch_size"] == saved["choices"]["batch_size"]
  assert run_config["eval"]["count"] == 10 and (workdir / "bundle" / "selected_tags.csv").exists()
  assert saved["hardware"]["platform"] == jax.devices()[0].platform

  # A missing dataset is one line naming it, and nothing is written.
  bad = subprocess.run([*cmd[:6], str(tmp_path / "other"), f"--config.data.dir={tmp_path / 'nope'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "nope" in bad.stderr and not (tmp_path / "other").exists()
