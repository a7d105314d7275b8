"""Nothing a user owns is destroyed, and bad input is one line: regression tests for the cases of
the data-loss issue (numbers in the test names), against one shared trained run."""
import hashlib
import io
import os
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from sw_zoo import cli
from sw_zoo.data.atomic_file import OutputRefused, check_output_dir
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.inference import pretrained
from tests.test_bundle import trained_source_run
from tests.test_train import tiny_config, tiny_data  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(root) -> dict[str, str]:
  """{relative path: sha256} of every file under `root` (and the empty folders)."""
  out = {}
  for directory, dirs, files in os.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    for name in dirs:
      out.setdefault(os.path.relpath(os.path.join(directory, name), root) + "/", "dir")
  return out


def foreign_dir(path) -> str:
  os.makedirs(path / "notes", exist_ok=True)
  (path / "precious.txt").write_text("my own work\n")
  (path / "notes" / "todo.md").write_text("- keep me\n")
  return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data):  # noqa: F811
  return trained_source_run(tmp_path_factory, tiny_data)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  for i in range(3):
    Image.new("RGB", (40, 30), (60 * i, 20, 200)).save(root / f"{i}.png")
  return str(root)


def test_output_rule():
  # Absent, empty or own-kind directories may be written; anything else needs --force; a directory
  # holding the inputs, the working directory or home never.
  check_output_dir("/nonexistent/sw_zoo_out", is_own=lambda p: False, what="x")
  with pytest.raises(OutputRefused, match="working directory"):
    check_output_dir(".", is_own=lambda p: True, what="x", force=True)
  with pytest.raises(OutputRefused, match="home directory"):
    check_output_dir(os.path.expanduser("~"), is_own=lambda p: True, what="x", force=True)


def test_1_export_never_replaces_a_foreign_folder_the_run_or_the_project(run, tmp_path, capsys):
  target = foreign_dir(tmp_path / "mine")
  before = snapshot(target)
  assert cli.main(["export", run, "--out", target]) == 2
  assert snapshot(target) == before
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"--out {target}" in err and "--force" in err
  run_before = snapshot(run)
  assert cli.main(["export", run, "--out", run, "--force"]) == 2  # the run itself: never
  assert cli.main(["export", run, "--out", os.path.dirname(run), "--force"]) == 2  # a folder holding it
  assert snapshot(run) == run_before
  assert cli.main(["export", run, "--out", str(tmp_path / "fresh")]) == 0  # absent: fine
  assert cli.main(["export", run, "--out", str(tmp_path / "fresh")]) == 0  # its own bundle: replaced
  assert cli.main(["export", run, "--out", target, "--force"]) == 0  # asked for
  assert bundle_lib.is_bundle(target)


def test_1_index_never_deletes_the_images_it_indexes(run, images, capsys):
  before = snapshot(images)
  assert cli.main(["index", images, "--model", run, "--out", images, "--force", "--no-progress"]) == 2
  assert snapshot(images) == before
  assert "an input of this command" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["export", "{run}", "--out", "{out}"],
    ["index", "{images}", "--model", "{run}", "--out", "{out}", "--no-progress"],
    ["eval", "{run}", "--data", "{data}", "--out", "{out}", "--no-progress", "--timing-repeats", "0"],
    ["find-missing-tags", "--data", "{data}", "--model", "{run}", "--out", "{out}", "--no-progress"],
    ["folds", "{data}", "--out", "{out}", "--no-progress"],
    ["synthetic", "--out", "{out}", "--num-train", "8", "--num-val", "4", "--workers", "1", "--no-progress"],
    ["prepare", "folder", "{images}", "--out", "{out}", "--workers", "1", "--no-progress"],
    ["inspect", "{data}", "--out", "{out}"],
    ["pareto", "{run}", "--throughput", "train", "--metric", "micro_f1", "--out", "{out}"],
])
def test_every_out_command_leaves_a_foreign_folder_alone(command, run, images, tiny_data, tmp_path):  # noqa: F811
  out = foreign_dir(tmp_path / "foreign")
  if command[0] == "pareto":  # pareto writes two named files beside others: a foreign pareto.csv
    (tmp_path / "foreign" / "pareto.csv").write_text("my,own,table\n")
  before = snapshot(out)
  argv = [a.format(run=run, images=images, data=tiny_data, out=out) for a in command]
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse
    code = e.code
  assert code != 0
  assert snapshot(out) == before


def test_7_a_refused_resume_leaves_the_workdir_byte_identical(run, tiny_data, tmp_path):  # noqa: F811
  import shutil

  from sw_zoo.train import train_and_evaluate

  workdir = str(tmp_path / "run")
  shutil.copytree(run, workdir)
  before = snapshot(workdir)
  with pytest.raises(ValueError, match="does not match this config"):
    train_and_evaluate(tiny_config(tiny_data, total_steps=5, **{"model.name": "nano"}), workdir)
  assert snapshot(workdir) == before


def _sw_zoo(*args, cwd=ROOT):
  env = {**os.environ, "WANDB_MODE": "disabled"}
  return subprocess.run([sys.executable, "-m", "sw_zoo.cli", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_9_errors_are_one_line_with_every_bad_config_key(tiny_data, run, tmp_path):  # noqa: F811
  result = _sw_zoo("train", "--config", "configs/demo.py", "--workdir", str(tmp_path / "w"),
                   "--config.optim.lrr=0.1", "--config.batchsize=3")
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1, result.stderr
  assert "config.optim.lrr (did you mean config.optim.lr?)" in result.stderr
  assert "config.batchsize (did you mean config.batch_size?)" in result.stderr
  assert not os.path.exists(tmp_path / "w")
  bad = _sw_zoo("train", "--config", "configs/demo.py", "--workdir", str(tmp_path / "w"),
                f"--config.data.dir={tmp_path}", "--config.optim.lr=-1")  # validated before any data work
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "config.optim.lr = -1" in bad.stderr
  missing = _sw_zoo("train", "--config", "configs/demo.py", "--workdir", str(tmp_path / "w"),
                    f"--config.data.dir={tmp_path}", "--config.data.synthetic.enabled=False")
  assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "dataset.json" in missing.stderr
  split = _sw_zoo("eval", run, "--data", tiny_data, "--split", "bogus", "--out", str(tmp_path / "e"))
  assert split.returncode == 2 and "--split 'bogus'" in split.stderr and "Traceback" not in split.stderr
  export = _sw_zoo("export", str(tmp_path / "nothing_here"))
  assert export.returncode == 2 and "config.init.checkpoint" not in export.stderr
  assert "no such directory" in export.stderr
  debug = _sw_zoo("export", str(tmp_path / "nothing_here"), "--debug")
  assert "Traceback" in debug.stderr


def test_10_export_is_quiet_and_archives_that_escape_are_bundle_errors(run, tmp_path):
  result = _sw_zoo("export", run, "--out", str(tmp_path / "b"))
  assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
  archive = tmp_path / "evil.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    data = b"owned"
    info = tarfile.TarInfo("../outside.txt")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
  dest = tmp_path / "unpacked"
  dest.mkdir()
  with pytest.raises(bundle_lib.BundleError, match="refused to unpack"):
    pretrained._unpack(str(archive), str(dest), "evil")
  assert not (tmp_path / "outside.txt").exists()
