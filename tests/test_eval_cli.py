"""`sw-zoo eval` on a real 3-step run (and on a bundle made from it), and `sw-zoo pareto`."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from flax import traverse_util

from sw_zoo.inference import bundle as bundle_lib
from sw_zoo import cli
from sw_zoo.evaluation import pareto
from sw_zoo.data import vocab
from sw_zoo.models.spec import param_shapes
from sw_zoo.train import warm_start
from sw_zoo.train.loop import train_and_evaluate
from tests.test_train import tiny_config, tiny_data  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):  # noqa: F811
  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(tiny_config(tiny_data, total_steps=3, eval_every_steps=0, **{"checkpoint.every_steps": 3}),
                     workdir)
  return workdir


@pytest.fixture(scope="module")
def bundle(trained_run, tiny_data, tmp_path_factory):  # noqa: F811
  """The trained run's EMA params as a model bundle."""
  params, _ = warm_start.read_params(trained_run)
  tags = vocab.read_selected_tags(os.path.join(tiny_data, "selected_tags.csv"))
  model = json.load(open(os.path.join(trained_run, "config.json")))["model"]
  spec = bundle_lib.ModelSpec(name=model["name"], num_tags=len(tags), act=model["act"], attn=model["attn"])
  out = tmp_path_factory.mktemp("bundles") / "tiny"
  return bundle_lib.write_bundle(out, params=traverse_util.unflatten_dict(params), spec=spec, image_size=32, tags=tags)


@pytest.mark.slow
def test_eval_writes_summary_csv_plots_and_table(trained_run, tiny_data, tmp_path, capsys):  # noqa: F811
  out = str(tmp_path / "eval")
  run_bundle = os.path.join(trained_run, "bundle")
  # The trainer tuned its bundle's thresholds on its final validation pass (eval.tune_thresholds).
  tuned_by_trainer = json.load(open(os.path.join(run_bundle, "config.json")))["thresholds"]
  assert cli.main(["eval", trained_run, "--data", tiny_data, "--out", out, "--no-progress"]) == 0
  printed = capsys.readouterr().out
  for name in ("eval_summary.json", "per_tag.csv", "thresholds.json", "pr_curve.png", "f1_vs_threshold.png",
               "tag_f1_vs_frequency.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  summary = json.load(open(os.path.join(out, "eval_summary.json")))
  # Same params, data and threshold as the trainer's final evaluation: the same numbers.
  trained = json.load(open(os.path.join(trained_run, "eval_summary.json")))
  assert summary["step"] == 3 and summary["images"] == 20 and summary["threshold"] == trained["threshold"]
  for key in ("micro_f1", "macro_f1", "micro_precision", "micro_recall"):
    assert summary[key] == pytest.approx(trained[key]), key
  assert summary["train_images_per_s"] == trained["train_images_per_s"] and summary["eval_images_per_s"] > 0
  assert list(summary["categories"]) == ["all", "rating", "general", "character"]
  for key in ("p_eq_r_threshold", "p_eq_r_f1", "best_threshold", "best_f1", "map", "auc", "mcc", "mcut_micro_f1"):
    assert key in summary and key in summary["categories"]["general"], key
  assert summary["best_f1"] >= summary["p_eq_r_f1"] - 1e-12
  header = printed.splitlines()
  assert any(line.startswith("category") and "F1@P=R" in line for line in header)
  assert any(line.startswith("rating") for line in header) and any(line.startswith("general") for line in header)
  rows = list(csv.DictReader(open(os.path.join(out, "per_tag.csv"))))
  assert len(rows) == summary["num_tags"] and rows[0]["category"] == "rating"
  assert {"tag", "count", "precision", "recall", "f1", "ap", "best_threshold"} <= set(rows[0])
  assert sum(int(r["count"]) for r in rows) > 0
  thresholds = json.load(open(os.path.join(out, "thresholds.json")))
  assert thresholds["method"] == "best_f1" and thresholds["default"] == summary["best_threshold"]
  assert thresholds["by_category"]["general"] == summary["categories"]["general"]["best_threshold"]
  # ... exactly what `sw-zoo eval` suggests on the same split, which it writes into that bundle too.
  assert tuned_by_trainer == thresholds
  assert json.load(open(os.path.join(run_bundle, "config.json")))["thresholds"] == thresholds


@pytest.mark.slow
def test_eval_of_a_bundle_updates_its_thresholds(bundle, tiny_data, tmp_path):  # noqa: F811
  out = str(tmp_path / "eval")
  assert cli.main(["eval", bundle, "--data", tiny_data, "--out", out, "--tta", "flip", "--threshold-method",
                   "p_eq_r", "--no-plots", "--no-progress", "--timing-repeats", "0"]) == 0
  summary = json.load(open(os.path.join(out, "eval_summary.json")))
  assert summary["kind"] == "bundle" and summary["tta"] == "flip" and summary["eval_images_per_s"] is None
  config = json.load(open(os.path.join(bundle, "config.json")))
  assert config["format"] == "sw_zoo.bundle" and config["model"]["name"] == "tiny"  # other keys kept
  assert bundle_lib.read_bundle(bundle).thresholds == config["thresholds"]  # still a valid bundle
  assert config["thresholds"] == json.load(open(os.path.join(out, "thresholds.json")))
  assert config["thresholds"]["method"] == "p_eq_r"
  assert config["thresholds"]["by_category"]["general"] == summary["categories"]["general"]["p_eq_r_threshold"]
  assert not [f for f in os.listdir(bundle) if f.endswith(".tmp")]


def test_eval_rejects_a_dataset_with_other_tags(tiny_data, tmp_path, capsys):  # noqa: F811
  # The vocabularies are compared before any model runs: zero params of the right shapes suffice.
  tags = vocab.read_selected_tags(os.path.join(tiny_data, "selected_tags.csv"))
  num_tags = len(tags)
  spec = bundle_lib.ModelSpec(name="tiny", num_tags=num_tags, act="silu", attn="eca")
  zeros = {tuple(path.split("/")): np.zeros(shape, dtype) for path, (shape, dtype) in
           param_shapes(spec, 32).items()}
  bundle = bundle_lib.write_bundle(tmp_path / "bundle", params=traverse_util.unflatten_dict(zeros), spec=spec,
                                   image_size=32, tags=tags)
  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  lines = (data / "selected_tags.csv").read_text().splitlines()
  fields = lines[5].split(",")
  fields[1] = "renamed_tag"
  lines[5] = ",".join(fields)
  (data / "selected_tags.csv").write_text("\n".join(lines) + "\n")
  assert cli.main(["eval", bundle, "--data", str(data), "--out", str(tmp_path / "o")]) == 2
  assert "differ at label index 4" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()
  lines.append("0,extra_tag,0,0")
  (data / "selected_tags.csv").write_text("\n".join(lines) + "\n")
  assert cli.main(["eval", bundle, "--data", str(data)]) == 2
  assert f"has {num_tags} outputs but" in capsys.readouterr().err


def test_eval_names_a_missing_checkpoint(tmp_path, capsys):
  assert cli.main(["eval", str(tmp_path), "--data", str(tmp_path)]) == 2
  assert "no finished checkpoint and no bundle" in capsys.readouterr().err


def test_help_lists_eval_and_pareto(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert "\n  eval " in out and "\n  pareto " in out


def test_pareto_front():
  points = [(0.5, 100.0), (0.6, 80.0), (0.55, 70.0), (0.4, 200.0), (0.4, 150.0), (0.6, 80.0)]
  assert pareto.pareto_front(points) == [True, True, False, True, False, True]


def _fake_run(root, name, f1, eval_speed, train_speed):
  run = root / name
  (run / "eval_validation").mkdir(parents=True)
  (run / "eval_summary.json").write_text(json.dumps({"micro_f1": f1 - 0.1, "train_images_per_s": train_speed}))
  (run / "eval_validation" / "eval_summary.json").write_text(json.dumps(
      {"p_eq_r_f1": f1, "eval_images_per_s": eval_speed, "categories": {"general": {"p_eq_r_f1": f1 - 0.05}}}))
  return str(run)


def test_pareto_marks_the_front(tmp_path, capsys):
  runs = [_fake_run(tmp_path, "l0_relu", 0.50, 900.0, 300.0), _fake_run(tmp_path, "l1_silu", 0.58, 500.0, 200.0),
          _fake_run(tmp_path, "l1_relu", 0.55, 450.0, 210.0), _fake_run(tmp_path, "l2_silu", 0.62, 250.0, 90.0)]
  out = tmp_path / "pareto"
  assert cli.main(["pareto", *runs, "--out", str(out)]) == 0
  rows = {r["run"]: r for r in csv.DictReader(open(out / "pareto.csv"))}
  assert {name for name, r in rows.items() if r["pareto"] == "1"} == {"l0_relu", "l1_silu", "l2_silu"}
  assert float(rows["l1_relu"]["p_eq_r_f1"]) == 0.55 and float(rows["l1_relu"]["eval_images_per_s"]) == 450.0
  assert (out / "pareto.png").stat().st_size > 0
  printed = capsys.readouterr().out
  assert "| l1_silu | 0.5800 | 500.0 | yes |" in printed and "| l1_relu | 0.5500 | 450.0 |  |" in printed
  # Train throughput: l1_relu (0.55 at 210/s) now beats l1_silu (0.58 at 200/s) on speed: both on the front.
  assert cli.main(["pareto", *runs, "--out", str(out), "--throughput", "train", "--metric", "micro_f1"]) == 0
  rows = {r["run"]: r for r in csv.DictReader(open(out / "pareto.csv"))}
  assert all(r["pareto"] == "1" for r in rows.values())
  # An eval output directory works as a RUN and is named after its run.
  assert cli.main(["pareto", os.path.join(runs[0], "eval_validation"), runs[1], "--out", str(out),
                   "--category", "general"]) == 0
  assert "| general p_eq_r_f1" in capsys.readouterr().out
  rows = {r["run"]: r for r in csv.DictReader(open(out / "pareto.csv"))}
  assert set(rows) == {"l0_relu", "l1_silu"} and float(rows["l0_relu"]["p_eq_r_f1"]) == pytest.approx(0.45)


def test_pareto_explains_a_missing_metric(tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  (run / "eval_summary.json").write_text(json.dumps({"micro_f1": 0.5, "train_images_per_s": 10.0}))
  assert cli.main(["pareto", str(run), "--out", str(tmp_path)]) == 2
  assert "no number for 'p_eq_r_f1' (run `sw-zoo eval` on the run)" in capsys.readouterr().err
