"""Recipes as configs (grid, finetune, transfer), keep-best checkpoints, warm starts, MFU and
W&B prediction tables through the real loop."""
import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import recipes
from sw_zoo.train import config_check, throughput, warm_start
from sw_zoo.train.checkpointing import Checkpointer
from sw_zoo.train.loop import train_and_evaluate
from tests.test_train import REPO, tiny_config, tiny_data  # noqa: F401  (fixture)

GRID = [(s, a, e) for s in recipes.SIZES for a in recipes.ACTIVATIONS for e in recipes.ATTENTIONS]


def test_every_grid_file_differs_only_in_size_activation_attention():
  reference = recipes.recipe("l0", "silu", "eca").to_dict()
  for size, act, attn in GRID:
    module = importlib.import_module(f"configs.{recipes.recipe_name(size, act, attn)}")
    c = module.get_config()
    config_check.validate(c)
    config_check.validate(module.get_config("runlocal"))
    assert (c.model.name, c.model.act, c.model.attn) == (size, act, attn)
    d = c.to_dict()
    for key in ("model", "wandb"):
      d.pop(key), reference.get(key)
    assert d == {k: v for k, v in reference.items() if k not in ("model", "wandb")}


def test_finetune_and_transfer_flavours():
  ft = importlib.import_module("configs.l1_silu_eca").get_config("finetune,init=runs/l1_silu_eca")
  assert (ft.data.image_size, ft.optim.lr, ft.optim.warmup_epochs, ft.optim.schedule, ft.total_epochs) == \
      (384, 0.1, 0.0, "cosine", 10.0)
  assert ft.init.checkpoint == "runs/l1_silu_eca" and not ft.init.new_head
  tr = importlib.import_module("configs.l0_relu").get_config("transfer,init=runs/x,freeze=^stem/|^stages_0_")
  assert tr.init.new_head and tr.init.freeze == "^stem/|^stages_0_"
  with pytest.raises(ValueError, match="need init="):
    importlib.import_module("configs.l0_relu").get_config("finetune")
  with pytest.raises(KeyError, match="'lr' is not one of"):
    importlib.import_module("configs.l0_relu").get_config("lr=0.3")


def test_command_line_overrides_are_checked_by_key():
  base = [sys.executable, "-m", "sw_zoo.train", "--config", "configs/l0_silu.py:runlocal", "--workdir", "/tmp/unused"]
  env = {**os.environ, "XLA_FLAGS": ""}
  typo = subprocess.run(base + ["--config.optim.lrr=0.05"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
  assert typo.returncode != 0 and "lrr" in typo.stderr
  bad = subprocess.run(base + ["--config.optim.name=sgdd", "--config.loss.name=l2"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert "config.optim.name = 'sgdd'" in bad.stderr and "config.loss.name = 'l2'" in bad.stderr


def test_keep_latest_n_plus_the_best_by_f1(tiny_data, tmp_path):
  from sw_zoo.data import pipeline
  it = iter(pipeline.make_train_dataset(tiny_data, split="train", global_batch_size=16, image_size=32, seed=0,
                                        process_index=0, process_count=1))
  ckpt = Checkpointer(str(tmp_path), every_steps=1, max_to_keep=2, async_save=False, keep_best=1)
  state = {"w": np.arange(4.0)}
  for step, f1 in zip(range(1, 7), [0.5, 0.9, 0.3, None, 0.4, 0.2]):
    ckpt.save(step, state, it, metrics=None if f1 is None else {"micro_f1": f1})
  ckpt.wait()
  assert sorted(ckpt.manager.all_steps()) == [2, 5, 6]
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 6
  ckpt.close()
  # The ranking is on disk: a resumed run keeps step 2 as the best while rotating the rest.
  ckpt = Checkpointer(str(tmp_path), every_steps=1, max_to_keep=2, async_save=False, keep_best=1)
  ckpt.save(7, state, it, metrics={"micro_f1": 0.1})
  ckpt.save(8, state, it)
  ckpt.wait()
  assert sorted(ckpt.manager.all_steps()) == [2, 7, 8] and ckpt.best_step() == 2
  ckpt.close()


def test_match_params_reinitialises_a_different_head_and_names_mismatches():
  target = {"stem": {"kernel": jax.ShapeDtypeStruct((3, 3, 3, 8), np.float32)},
            "head": {"kernel": jax.ShapeDtypeStruct((8, 5), np.float32), "bias": jax.ShapeDtypeStruct((5,), np.float32)}}
  source = {("stem", "kernel"): np.ones((3, 3, 3, 8)), ("head", "kernel"): np.ones((8, 9)), ("head", "bias"): np.ones(9)}
  copied, fresh = warm_start.match_params(source, target, new_head=False)
  assert list(copied) == [("stem", "kernel")] and fresh == ["head/kernel", "head/bias"]
  source[("stem", "kernel")] = np.ones((3, 3, 3, 16))
  with pytest.raises(ValueError, match=r"stem/kernel: checkpoint has shape \(3, 3, 3, 16\), the model needs \(3, 3, 3, 8\)"):
    warm_start.match_params(source, target, new_head=False)
  with pytest.raises(ValueError, match="config.init.checkpoint='/nonexistent/run': .*no such directory"):
    warm_start.read_params("/nonexistent/run")


def test_peak_flops_lookup_and_mfu():
  class Dev:
    device_kind = "TPU v5 lite"
  assert throughput.peak_flops_per_device(Dev()) == 197e12
  Dev.device_kind = "cpu"
  assert throughput.peak_flops_per_device(Dev()) is None
  assert throughput.peak_flops_per_device(Dev(), 1e12) == 1e12
  u = throughput.utilisation(2e12, 0.5, 4, 1e12)
  assert u == {"tflops_per_s": 1.0, "mfu": 0.25}


@pytest.mark.slow
def test_transfer_run_freezes_by_regex_and_gets_a_new_head(tiny_data, tmp_path):
  """A source run, then a transfer run from it (new head, stem + first stage frozen, EMA, grad
  accumulation, LAMB, ASL, keep-best): the frozen params stay exactly the source's."""
  source_dir = str(tmp_path / "source")
  train_and_evaluate(tiny_config(tiny_data, total_steps=3), source_dir)
  c = tiny_config(tiny_data, total_steps=4, eval_every_steps=2, peak_flops_per_device=1e12)
  c.init.checkpoint = source_dir
  c.init.new_head = True
  c.init.freeze = r"^(stem|stages_0_\d+)/"
  c.optim.name, c.optim.ema_decay, c.optim.grad_accum_steps = "lamb", 0.9, 2
  c.loss.name = "asl"
  c.checkpoint.keep_best = 1
  result = train_and_evaluate(c, str(tmp_path / "transfer"))
  assert result["step"] == 4

  def params_of(workdir, key="params"):
    ckpt = Checkpointer(workdir, every_steps=1, max_to_keep=5)
    state = ckpt.restore_arrays()
    ckpt.close()
    return state[key]

  src, dst = params_of(source_dir), params_of(str(tmp_path / "transfer"))
  jax.tree.map(np.testing.assert_array_equal, src["stem"], dst["stem"])
  jax.tree.map(np.testing.assert_array_equal, src["stages_0_0"], dst["stages_0_0"])
  assert not np.allclose(src["head"]["kernel"], dst["head"]["kernel"])
  assert not np.allclose(src["stages_1_0"]["conv1"]["kernel"], dst["stages_1_0"]["conv1"]["kernel"])
  lines = [json.loads(l) for l in open(tmp_path / "transfer" / "metrics.jsonl")]
  train_lines = [l for l in lines if "train/loss" in l]
  assert all("train/tflops_per_s" in l and 0 < l["train/mfu"] for l in train_lines)


def test_wandb_offline_run_logs_config_metrics_and_a_prediction_table(tmp_path, monkeypatch):
  from sw_zoo.train.writer import MetricWriter

  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.setenv("WANDB_SILENT", "true")
  c = tiny_config("unused")
  c.wandb.mode = "offline"
  writer = MetricWriter(str(tmp_path), c)
  assert writer.wants_predictions
  writer.write(1, {"loss": 0.5, "images_per_s": 10.0}, prefix="train/")
  rng = np.random.default_rng(0)
  samples = {"image": rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8),
             "labels": np.eye(2, 3, dtype=np.float32), "probs": np.array([[0.9, 0.1, 0.6], [0.2, 0.3, 0.1]])}
  writer.log_predictions(1, samples, ["red", "blue", "circle"], threshold=0.5)
  writer.close()
  tables = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "val" / "*.table.json"))
  assert tables, os.listdir(tmp_path)
  table = json.load(open(tables[0]))
  assert table["columns"] == ["image", "predicted", "true", "missed", "extra"]
  assert table["data"][0][1:] == ["red 0.90, circle 0.60", "red", "", "circle"]
  assert table["data"][1][1:] == ["", "blue", "blue", ""]
