"""Launch scripts: tpu_pod.sh (dry-run, and the real path against a fake gcloud), sweep.sh and
the sweep YAML generator, setup_env.sh's extras, and that every script documents its variables.

Nothing here needs gcloud, a TPU or the W&B service.
"""
import atexit
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SWEEP_YAML = LAUNCH / "sweep_size_x_activation.yaml"
POD_ENV = {"TPU_NAME": "tagger", "TPU_ZONE": "us-central2-b", "GCS_BUCKET": "bkt"}
POD_VARS = ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT", "TPU_TYPE", "TPU_RUNTIME", "TPU_SPOT",
            "TPU_CREATE_FLAGS", "TPU_SSH_FLAGS", "GCS_BUCKET", "SW_ZOO_REF", "SW_ZOO_CACHE",
            "SW_ZOO_CACHE_MAX_GB")
# Overrides a shell would split or mangle if they were passed through unquoted.
TRICKY = ["--config.wandb.tags=a,b", "--config.wandb.name=my run's"]


# First on PATH for every test: a gcloud that records being called and fails, so a dry run
# provably needs no gcloud (the fake-gcloud tests put their own in front of it).
GUARD = Path(tempfile.mkdtemp(prefix="sw_zoo_test_launch_"))
(GUARD / "gcloud").write_text(f"#!/bin/sh\ntouch {GUARD}/called\nexit 97\n")
(GUARD / "gcloud").chmod(0o755)
atexit.register(shutil.rmtree, GUARD, True)


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in POD_VARS}
  env["PATH"] = f"{GUARD}{os.pathsep}{env['PATH']}"
  env.update(extra)
  return env


def _bash(script, *args, env=None, cwd=ROOT, timeout=120):
  return subprocess.run(["bash", str(script), *args], cwd=cwd, env=env or _env(),
                        capture_output=True, text=True, timeout=timeout)


def _commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _option(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def _trainer_argv(remote: str) -> list[str]:
  """The trainer's argv inside the remote start command, as the worker's shell will split it."""
  words = shlex.split(remote)
  start = words.index("nohup") + 1
  return words[start:words.index(">>", start)]


# ---- tpu_pod.sh --dry-run ---------------------------------------------------------------------

def test_tpu_pod_dry_run_prints_every_command():
  result = _bash(LAUNCH / "tpu_pod.sh", "--dry-run", "configs/l2_silu_eca.py", *TRICKY,
                 env=_env(**POD_ENV, TPU_PROJECT="proj"))
  assert result.returncode == 0, result.stderr
  assert not (GUARD / "called").exists()
  commands = _commands(result.stdout)
  gcloud = [c for c in commands if c[0] == "gcloud"]
  verbs = [c[4] for c in gcloud]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh"]
  for c in gcloud:
    assert c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
    assert "--zone=us-central2-b" in c and "--project=proj" in c
  describe, create, scp, setup, start = gcloud
  assert describe[5] == create[5] == "tagger"
  assert _option(create, "--accelerator-type") == "v4-32"
  assert _option(create, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" not in create
  # The code goes to every worker as one archive of the repository.
  assert any(c[:2] == ["git", "-C"] and "archive" in c for c in commands)
  assert scp[6] == "tagger:sw_zoo.tar.gz" and "--worker=all" in scp
  # Install: the project plus jax[tpu], without the CPU test extras.
  assert "--worker=all" in setup
  install = _option(setup, "--command")
  assert "setup_env.sh" in install and 'SW_ZOO_PIP_PACKAGES="jax[tpu]"' in install
  assert "SW_ZOO_EXTRAS= " in install
  # Start: detached, on every worker, multihost, GCS workdir, overrides intact.
  assert "--worker=all" in start
  remote = _option(start, "--command")
  assert "setsid nohup" in remote and "~/sw_zoo_train.log" in remote
  assert _trainer_argv(remote) == [
      "~/sw_zoo_venv/bin/python", "-m", "sw_zoo.train", "--config", "configs/l2_silu_eca.py",
      "--workdir", "gs://bkt/runs/l2_silu_eca", "--multihost", *TRICKY]
  # How to follow the logs is printed (as a note, not a command).
  assert re.search(r"^# .*--worker=0 .*tail .*sw_zoo_train\.log", result.stdout, re.M)


def test_tpu_pod_dry_run_options():
  result = _bash(LAUNCH / "tpu_pod.sh", "configs/l2_silu_eca.py:runlocal", "--workdir", "gs://b/x y",
                 "--config.optim.lr=0.05", "--dry-run",
                 env=_env(TPU_NAME="t", TPU_ZONE="z", TPU_SPOT="1", TPU_TYPE="v5litepod-16",
                          TPU_CREATE_FLAGS="--reserved --network=n", TPU_SSH_FLAGS="--internal-ip",
                          SW_ZOO_CACHE_MAX_GB="200"))
  assert result.returncode == 0, result.stderr  # no GCS_BUCKET needed with --workdir
  gcloud = [c for c in _commands(result.stdout) if c[0] == "gcloud"]
  create = gcloud[1]
  assert _option(create, "--version") == "v2-alpha-tpuv5-lite"
  assert create[-3:] == ["--spot", "--reserved", "--network=n"]
  assert all("--internal-ip" in c for c in gcloud[2:])
  assert not any(a.startswith("--project") for c in gcloud for a in c)
  argv = _trainer_argv(_option(gcloud[-1], "--command"))
  assert argv[:2] == ["env", "SW_ZOO_CACHE_MAX_GB=200"]  # the gs:// mirror's bound reaches the workers
  assert argv[5:] == ["--config", "configs/l2_silu_eca.py:runlocal", "--workdir", "gs://b/x y", "--multihost",
                      "--config.optim.lr=0.05"]


@pytest.mark.parametrize("missing", ["TPU_NAME", "TPU_ZONE", "GCS_BUCKET"])
def test_tpu_pod_missing_variable_is_named(missing):
  env = _env(**{k: v for k, v in POD_ENV.items() if k != missing})
  result = _bash(LAUNCH / "tpu_pod.sh", "--dry-run", "configs/l2_silu_eca.py", env=env)
  assert result.returncode != 0
  assert f"{missing} is not set" in result.stderr
  assert "+ " not in result.stdout  # nothing was (pretend-)run before the check


def test_tpu_pod_rejects_bad_input():
  result = _bash(LAUNCH / "tpu_pod.sh", "--dry-run", "configs/nope.py", env=_env(**POD_ENV))
  assert result.returncode != 0 and "configs/nope.py not found" in result.stderr
  result = _bash(LAUNCH / "tpu_pod.sh", "--dry-run", "configs/l2_silu_eca.py",
                 env=_env(**POD_ENV, TPU_SPOT="maybe"))
  assert result.returncode != 0 and "TPU_SPOT=maybe" in result.stderr


# ---- every variable a script reads is documented in its header (what --help prints) --------

SHELL_VARS = {"BASH_SOURCE", "PATH", "PWD"}


def _header(text: str) -> str:
  lines = text.splitlines()[1:]
  return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))


def _code(text: str) -> str:
  return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _assigned(code: str) -> set[str]:
  """Variables a script sets itself, except `X=${X:-default}`, which reads X from the environment."""
  assigned = set(re.findall(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=", code, re.M))
  defaulted = set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)=\"?\$\{\1\b", code, re.M))
  return assigned - defaulted


def _variables_read(text: str) -> set[str]:
  code = _code(text)
  # Variables set by a sourced sibling (setup_env.sh's SW_ZOO_ROOT) are not the user's to set.
  set_by_launch = set().union(*(_assigned(_code(p.read_text())) for p in LAUNCH.glob("*.sh")))
  return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", code)) - set_by_launch - SHELL_VARS


def _variables_documented(header: str) -> set[str]:
  return set(re.findall(r"^#\s+([A-Z][A-Z0-9_]+)\s{2,}\S", header, re.M))


@pytest.mark.parametrize("script", ["tpu_pod.sh", "sweep.sh", "setup_env.sh", "dry_run.sh"])
def test_every_variable_read_is_documented(script):
  text = (LAUNCH / script).read_text()
  read, documented = _variables_read(text), _variables_documented(_header(text))
  assert read <= documented, f"{script} reads {sorted(read - documented)} without documenting them"
  assert documented <= read, f"{script} documents {sorted(documented - read)} but never reads them"
  if script in ("tpu_pod.sh", "sweep.sh"):
    help_text = _bash(LAUNCH / script, "--help").stdout
    for name in documented:
      assert re.search(rf"^\s+{name}\s", help_text, re.M), f"--help of {script} lacks {name}"


def test_tpu_pod_help_lists_its_variables():
  result = _bash(LAUNCH / "tpu_pod.sh", "--help")
  assert result.returncode == 0
  for name in POD_VARS:
    assert re.search(rf"^\s+{name}\s", result.stdout, re.M), name


# ---- tpu_pod.sh for real, against a fake gcloud -----------------------------------------------

FAKE_GCLOUD = r"""#!{python}
# Records each call; describe answers from FAKE_TPU_STATE; scp copies into FAKE_HOME; ssh runs
# the remote command there with bash when FAKE_GCLOUD_EXEC is set.
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\n")
verb = args[3]
state = os.environ.get("FAKE_TPU_STATE", "")
if verb == "describe":
  if not state:
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource 'x' was not found")
  if state == "DENIED":
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) PERMISSION_DENIED: nope")
  print("WARNING: an update is available", file=sys.stderr)  # must not be taken for the answer
  print(state + "\t" + os.environ.get("FAKE_TPU_TYPE", "v4-32"))
elif verb == "scp":
  shutil.copy(args[4], os.path.join(os.environ["FAKE_HOME"], args[5].split(":", 1)[1]))
elif verb == "ssh" and os.environ.get("FAKE_GCLOUD_EXEC"):
  command = [a for a in args if a.startswith("--command=")][0].split("=", 1)[1]
  sys.exit(subprocess.call(["bash", "-c", command],
                           env=dict(os.environ, HOME=os.environ["FAKE_HOME"]), cwd=os.environ["FAKE_HOME"]))
"""

# Stands in for the workers' Python: records its argv, one file per call.
FAKE_PYTHON = """#!/bin/sh
call=$(mktemp "$HOME/calls/call.XXXXXX")
printf '%s\\0' "$@" > "$call"
"""


def _git(repo, *args):
  subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                 env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                          GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t"))


@pytest.fixture
def pod(tmp_path):
  """A small checkout with tpu_pod.sh, a fake gcloud on PATH and a fake worker home."""
  repo = tmp_path / "repo"
  (repo / "launch").mkdir(parents=True)
  for name in ("tpu_pod.sh", "dry_run.sh", "setup_env.sh"):
    shutil.copy(LAUNCH / name, repo / "launch" / name)
  shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
  (repo / "configs").mkdir()
  (repo / "configs" / "exp.py").write_text("committed = True\n")
  (repo / ".gitignore").write_text("ignored/\n")
  _git(repo, "init", "-q")
  _git(repo, "add", "-A")
  _git(repo, "commit", "-q", "-m", "init")
  # Shipped as they are: an uncommitted edit and an untracked file; never: an ignored one.
  (repo / "configs" / "exp.py").write_text("committed = False\n")
  (repo / "configs" / "new.py").write_text("untracked = True\n")
  (repo / "ignored").mkdir()
  (repo / "ignored" / "big.bin").write_text("x")

  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  (home / "calls").mkdir(parents=True)
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD.replace("{python}", sys.executable))
  (bin_dir / "python3.13").write_text("#!/bin/sh\nexit 0\n")  # passes the ">= 3.11" probe
  (home / "sw_zoo_venv" / "bin").mkdir(parents=True)
  (home / "sw_zoo_venv" / "bin" / "python").write_text(FAKE_PYTHON)
  for exe in (bin_dir / "gcloud", bin_dir / "python3.13", home / "sw_zoo_venv" / "bin" / "python"):
    exe.chmod(0o755)
  log = tmp_path / "gcloud.jsonl"
  env = _env(**POD_ENV, FAKE_GCLOUD_LOG=str(log), FAKE_HOME=str(home))
  env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"

  class Pod:
    def run(self, *args, **extra):
      return _bash(repo / "launch" / "tpu_pod.sh", *args, env={**env, **extra}, cwd=repo)

    def calls(self):
      return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def python_calls(self, timeout=10.0):
      deadline = time.time() + timeout
      while True:
        calls = [p.read_bytes().split(b"\0")[:-1] for p in sorted((home / "calls").iterdir())]
        calls = [[a.decode() for a in c] for c in calls]
        if any("sw_zoo.train" in c for c in calls) or time.time() > deadline:
          return calls
        time.sleep(0.1)

  Pod.repo, Pod.home = repo, home
  return Pod()


def test_tpu_pod_creates_ships_installs_and_starts(pod):
  # A trainer left running by an earlier launch: it must be stopped before the code changes.
  previous = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "sw_zoo.train"])
  try:
    (pod.home / "sw_zoo_train.pid").write_text(f"{previous.pid}\n")
    result = pod.run("configs/exp.py", *TRICKY, FAKE_GCLOUD_EXEC="1")
    assert result.returncode == 0, result.stderr
    assert previous.wait(timeout=10) != 0  # got SIGTERM
  finally:
    previous.kill()
    previous.wait()

  calls = pod.calls()
  assert [c[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh"]  # not found: created
  assert all("--worker=all" in c for c in calls[2:])

  code = pod.home / "sw_zoo"
  assert (code / "configs" / "exp.py").read_text() == "committed = False\n"
  assert (code / "configs" / "new.py").exists()
  assert not (code / "ignored").exists()
  assert (code / "launch" / "tpu_pod.sh").exists()

  python = pod.python_calls()
  install = [c for c in python if c[:4] == ["-m", "pip", "install", "-q"] and "-e" in c]
  assert install == [["-m", "pip", "install", "-q", "-e", str(code), "jax[tpu]"]]
  trainer = [c for c in python if "sw_zoo.train" in c]
  assert trainer == [["-m", "sw_zoo.train", "--config", "configs/exp.py",
                      "--workdir", "gs://bkt/runs/exp", "--multihost", *TRICKY]]
  assert "starting sw_zoo.train" in (pod.home / "sw_zoo_train.log").read_text()
  assert (pod.home / "sw_zoo_train.pid").read_text().strip().isdigit()
  assert "tail -n 200 -F ~/sw_zoo_train.log" in result.stdout
  # The user's own index is untouched: the untracked file is still untracked.
  status = subprocess.run(["git", "-C", str(pod.repo), "status", "--porcelain"],
                          capture_output=True, text=True).stdout
  assert "?? configs/new.py" in status


@pytest.mark.parametrize("state, verbs", [
    ("READY", ["describe", "scp", "ssh", "ssh"]),
    ("STOPPED", ["describe", "start", "scp", "ssh", "ssh"]),
    ("PREEMPTED", ["describe", "delete", "create", "scp", "ssh", "ssh"]),
])
def test_tpu_pod_reuses_an_existing_tpu(pod, state, verbs):
  result = pod.run("configs/exp.py", FAKE_TPU_STATE=state)
  assert result.returncode == 0, result.stderr
  assert [c[3] for c in pod.calls()] == verbs


@pytest.mark.parametrize("state, message", [
    ("CREATING", "TPU tagger is CREATING"),
    ("DENIED", "PERMISSION_DENIED"),
])
def test_tpu_pod_stops_when_the_tpu_is_unusable(pod, state, message):
  result = pod.run("configs/exp.py", FAKE_TPU_STATE=state)
  assert result.returncode != 0 and message in result.stderr
  assert [c[3] for c in pod.calls()] == ["describe"]


def test_tpu_pod_refuses_a_tpu_of_another_type(pod):
  result = pod.run("configs/exp.py", FAKE_TPU_STATE="READY", TPU_TYPE="v5p-8")
  assert result.returncode != 0 and "v4-32" in result.stderr and "v5p-8" in result.stderr
  assert [c[3] for c in pod.calls()] == ["describe"]


def test_tpu_pod_ships_a_git_ref(pod):
  result = pod.run("configs/exp.py", FAKE_GCLOUD_EXEC="1", FAKE_TPU_STATE="READY", SW_ZOO_REF="HEAD")
  assert result.returncode == 0, result.stderr
  assert (pod.home / "sw_zoo" / "configs" / "exp.py").read_text() == "committed = True\n"
  assert not (pod.home / "sw_zoo" / "configs" / "new.py").exists()
  bad = pod.run("configs/new.py", SW_ZOO_REF="HEAD")
  assert bad.returncode != 0 and "not in SW_ZOO_REF=HEAD" in bad.stderr


# ---- setup_env.sh: extras and extra packages ----------------------------------------------------

def test_setup_env_extras_and_packages(tmp_path):
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/pip.log\n')
  (venv / "bin" / "python").chmod(0o755)
  (tmp_path / "jaxt").write_text("")  # would match the glob jax[tpu] if it were expanded

  def setup(**env):
    subprocess.run(["bash", "-c", f"source {LAUNCH / 'setup_env.sh'}"], cwd=tmp_path, check=True,
                   capture_output=True, env=_env(SW_ZOO_VENV=str(venv), **env))
    log = tmp_path / "pip.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [line for line in lines if "-e" in line.split()]

  tpu = {"SW_ZOO_EXTRAS": "", "SW_ZOO_PIP_PACKAGES": "jax[tpu] msgpack"}
  assert setup(**tpu) == [f"-m pip install -q -e {ROOT} jax[tpu] msgpack"]
  assert setup(**tpu) == []  # stamp matches: nothing to do
  assert setup() == [f"-m pip install -q -e {ROOT}[test,parity]"]
  # The default stamp is the one venvs made before SW_ZOO_EXTRAS existed carry.
  want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + b"test,parity\n").hexdigest()
  assert (venv / ".sw_zoo_install_stamp").read_text().strip() == want


# ---- sweeps -----------------------------------------------------------------------------------

RECIPES = [f"configs/{size}_{act}{'_eca' if attn == 'eca' else ''}.py"
           for size, act, attn in itertools.product(("l0", "l1", "l2"), ("silu", "hswish", "relu"),
                                                    ("eca", "none"))]


def test_sweep_yaml_is_generated_and_committed():
  generated = subprocess.run([sys.executable, str(LAUNCH / "make_sweep.py")], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
  assert generated == SWEEP_YAML.read_text(), (
      "launch/sweep_size_x_activation.yaml is stale: "
      "python launch/make_sweep.py > launch/sweep_size_x_activation.yaml")
  sweep = yaml.safe_load(generated)
  assert sweep["method"] == "grid"
  assert sweep["metric"] == {"name": "val/micro_f1", "goal": "maximize"}
  # The 3 x 3 x 2 grid, one recipe file per point.
  assert sweep["parameters"] == {"config": {"values": RECIPES}}
  assert sweep["command"] == ["bash", "${program}", "run", "${args}"]


def _agent_command(sweep: dict, point: dict) -> list[str]:
  """The command a W&B agent runs for one grid point, expanded by wandb's own code."""
  from wandb.sdk.launch.sweeps import utils as sweep_utils

  variables = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
  variables["program"] = [sweep["program"]]
  command = []
  for word in sweep["command"]:
    command += variables[word[2:-1]] if word.startswith("${") else [word]
  return command


def test_sweep_agent_command_runs_the_recipe():
  sweep = yaml.safe_load(SWEEP_YAML.read_text())
  # A second parameter shows how any other swept key reaches the trainer.
  command = _agent_command(sweep, {"config": "configs/l1_hswish.py", "config.optim.lr": 0.05})
  assert command == ["bash", "launch/sweep.sh", "run", "--config=configs/l1_hswish.py",
                     "--config.optim.lr=0.05"]
  result = subprocess.run([*command, "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          env=_env(WANDB_SWEEP_ID="sw1", WANDB_RUN_ID="run7"))
  assert result.returncode == 0, result.stderr
  (local,) = _commands(result.stdout)
  assert local == ["bash", str(LAUNCH / "local.sh"), "configs/l1_hswish.py", "--workdir",
                   "runs/sweep/sw1/run7", "--config.wandb.mode=online", "--config.optim.lr=0.05"]
  # Outside an agent, `run` explains itself instead of guessing a workdir.
  outside = _bash(LAUNCH / "sweep.sh", "run", "--config=configs/l1_hswish.py")
  assert outside.returncode != 0 and "sweep.sh local" in outside.stderr


def test_sweep_local_dry_run_runs_the_grid(tmp_path):
  finished = tmp_path / "size_x_activation" / "l2_relu"
  finished.mkdir(parents=True)
  (finished / "eval_summary.json").write_text("{}")
  result = _bash(LAUNCH / "sweep.sh", "local", str(SWEEP_YAML), "--dry-run", "--runs", str(tmp_path),
                 "--config-arg", "runlocal", "--config.total_steps=10")
  assert result.returncode == 0, result.stderr
  assert "l2_relu finished already" in result.stdout
  commands = _commands(result.stdout)
  expected = [c for c in RECIPES if c != "configs/l2_relu.py"]
  assert [c[2] for c in commands] == [f"{c}:runlocal" for c in expected]
  for c, config in zip(commands, expected):
    assert c[:2] == ["bash", "launch/local.sh"]
    assert c[3:] == ["--workdir", str(tmp_path / "size_x_activation" / Path(config).stem),
                     "--config.total_steps=10"]


def test_sweep_local_runs_any_grid(tmp_path):
  """A hand-written sweep over another key: a fixed config in the command, values as overrides."""
  custom = tmp_path / "lr.yaml"
  custom.write_text(yaml.safe_dump({
      "name": "lr", "program": "launch/sweep.sh", "method": "grid",
      "parameters": {"config.optim.lr": {"values": [0.1, 0.01]}, "config.seed": {"value": 3}},
      "command": ["bash", "${program}", "run", "--config=configs/demo.py:quick", "${args}"]}))
  result = _bash(LAUNCH / "sweep.sh", "local", str(custom), "--dry-run", "--runs", str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert _commands(result.stdout) == [
      ["bash", "launch/local.sh", "configs/demo.py:quick", "--workdir", str(tmp_path / "lr" / f"{lr}-3"),
       f"--config.optim.lr={lr}", "--config.seed=3"] for lr in ("0.1", "0.01")]


def test_sweep_needs_the_service_or_points_to_local():
  for mode in (["create"], ["agent", "ent/proj/abc"]):
    result = _bash(LAUNCH / "sweep.sh", *mode, env=_env(WANDB_MODE="offline"))
    assert result.returncode != 0 and "bash launch/sweep.sh local" in result.stderr
  result = _bash(LAUNCH / "sweep.sh", "agent", "ent/proj/abc", "--count", "3", "--agents", "2",
                 "--dry-run", env=_env(WANDB_MODE="online"))
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
  assert lines == [f"+ wandb agent --count 3 ent/proj/abc > runs/sweep/agent-{i}.log 2>&1 &"
                   for i in (1, 2)]
