"""The `sw-zoo` entry point dispatches subcommands and explains itself."""
from sw_zoo import cli


def test_help_lists_commands(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert "train" in out and "synthetic" in out


def test_unknown_command_is_an_error(capsys):
  assert cli.main(["trian"]) == 2
  assert "unknown command 'trian'" in capsys.readouterr().err


def test_synthetic_subcommand_writes_a_dataset(tmp_path):
  out = tmp_path / "syn"
  assert cli.main(["synthetic", "--out", str(out), "--num-train", "8", "--num-val", "4",
                   "--image-size", "32", "--no-progress", "--workers", "1"]) == 0
  assert (out / "dataset.json").exists() and (out / "selected_tags.csv").exists()
