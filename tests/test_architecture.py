"""The package layout contract: imports only run downwards (pyproject.toml [tool.importlinter]),
and the light entry points stay light."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(cwd: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": cwd}
  return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
  result = _lint(ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "3 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_build(tmp_path):
  # The same tree with one upward import added: the data layer reaching into the CLI.
  for name in ("sw_zoo", "data_prep", "configs"):
    shutil.copytree(os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path)
  with open(tmp_path / "sw_zoo" / "data" / "vocab.py", "a", encoding="utf-8") as f:
    f.write("\nfrom sw_zoo.cli import commands  # noqa: E402,F401\n")
  result = _lint(str(tmp_path))
  assert result.returncode != 0
  assert "sw_zoo layers: imports only run downwards BROKEN" in result.stdout
  assert "sw_zoo.data.vocab -> sw_zoo.cli.commands" in result.stdout


def _modules_loaded_by(statement: str) -> set[str]:
  code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  return set(out.split())


def test_reading_a_vocabulary_and_the_cli_help_stay_light():
  heavy = {"jax", "grain", "cv2", "orbax", "flax", "torch"}
  assert not heavy & _modules_loaded_by("import sw_zoo.data.vocab, sw_zoo.data.dataset_info")
  assert not heavy & _modules_loaded_by("from sw_zoo.cli import commands; commands.main(['--help'])")
  assert not heavy & _modules_loaded_by("import sw_zoo.evaluation.metrics, sw_zoo.evaluation.thresholds")
