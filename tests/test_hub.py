"""`hf-hub:` names: a bundle repo through `load_pretrained`, timm weights as a warm start, the
cache (offline reuse, sha256 checks) and the errors, against a fake Hub on 127.0.0.1.

The fake Hub answers what huggingface_hub's `hf_hub_download` asks (huggingface_hub/
file_download.py, `get_hf_file_metadata`): HEAD and GET {endpoint}/{repo}/resolve/{revision}/
{file}, with X-Repo-Commit, ETag and Content-Length, and the X-Error-Code header its errors are
told apart by. It sends no X-Xet-* headers, so no Xet download is attempted. Nothing contacts
huggingface.co.
"""
from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import threading
import urllib.parse

import numpy as np
import pytest
from flax import traverse_util

import sw_zoo
from sw_zoo.inference import hub, model_source, pretrained
from sw_zoo.inference.tagger import Tagger
from sw_zoo.models import convert_timm
from sw_zoo.models.spec import ModelSpec
from sw_zoo.train import warm_start
from sw_zoo.train.config_check import ConfigError
from tests.test_bundle import restore_params
from tests.test_tagger import make_bundle, sample_images
from tests.test_train import tiny_config, tiny_data  # noqa: F401  (fixture)

BUNDLE_REPO = "someone/tiny-tagger"
TIMM_REPO = "timm/test_nfnet.r160_in1k"
VIT_REPO = "timm/vit_tiny_patch16_224.augreg_in21k"
TIMM_SPEC = ModelSpec(name="test_nfnet", num_tags=0, act="silu", attn="se")

needs_timm = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None,
    reason="writing a timm checkpoint needs torch + timm (pip install 'sw_zoo[parity]')")


class FakeHub:
  """Serves {repo_id: {file: bytes}}, each repo at one commit, reachable as main, as that commit,
  and as tag v1. `requests` records (method, path) of everything asked; with `plain` set it
  answers like a web server that is not a Hub (no X-Repo-Commit)."""

  def __init__(self, repos: dict[str, dict[str, bytes]]):
    self.repos = repos
    self.plain = False
    self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
    self.requests: list[tuple[str, str]] = []
    hub_ = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_HEAD(self):
        self._answer(body=False)

      def do_GET(self):
        self._answer(body=True)

      def _answer(self, body: bool):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        hub_.requests.append((self.command, path))
        repo, _, rest = path.strip("/").partition("/resolve/")
        revision, _, file = rest.partition("/")
        if repo not in hub_.repos:
          return self._error(404, "RepoNotFound")
        commit = hub_.commits[repo]
        if revision not in ("main", "v1", commit):
          return self._error(404, "RevisionNotFound")
        if file not in hub_.repos[repo]:
          return self._error(404, "EntryNotFound", commit)
        data = hub_.repos[repo][file]
        self.send_response(200)
        if not hub_.plain:
          self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
          self.wfile.write(data)

      def _error(self, status: int, code: str, commit: str | None = None):
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        if commit:
          self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    self.thread.start()

  def stop(self):
    self.server.shutdown()
    self.server.server_close()

  def fetched(self, repo: str) -> list[str]:
    """The files of `repo` that were downloaded (GET)."""
    return [p.rsplit("/", 1)[-1] for m, p in self.requests if m == "GET" and p.startswith(f"/{repo}/")]


def _files(directory) -> dict[str, bytes]:
  return {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}


@pytest.fixture(scope="module")
def bundle_files(tmp_path_factory):
  directory = make_bundle(tmp_path_factory.mktemp("hub_bundle") / "bundle")
  return directory, _files(directory)


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
  """A timm test_nfnet checkpoint in the Hub's layout (timm's own save_for_hf writes
  model.safetensors + config.json as `push_to_hf_hub` uploads them), randomly initialised."""
  if importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None:
    pytest.skip("writing a timm checkpoint needs torch + timm (pip install 'sw_zoo[parity]')")
  import torch
  from safetensors.numpy import load_file

  from tests.timm_compat import import_timm

  timm = import_timm()  # first: it makes timm's torchvision import work beside a CPU torch
  from timm.models import _hub as timm_hub
  torch.manual_seed(0)
  model = timm.create_model("test_nfnet", pretrained=False)
  directory = tmp_path_factory.mktemp("timm_repo")
  timm_hub.save_for_hf(model, str(directory), safe_serialization=True)
  files = _files(directory)
  assert set(files) == {"model.safetensors", "config.json"}
  assert json.loads(files["config.json"])["architecture"] == "test_nfnet"
  return directory, files, dict(load_file(str(directory / "model.safetensors")))


@pytest.fixture
def fake_hub(bundle_files, monkeypatch, tmp_path):
  """The fake Hub with a bundle repo, an unsupported timm repo and (when timm is installed, see
  `timm_hub`) a timm NFNet repo; the sw_zoo cache and HF_HOME in tmp_path."""
  repos = {BUNDLE_REPO: bundle_files[1],
           VIT_REPO: {"config.json": json.dumps({"architecture": "vit_tiny_patch16_224"}).encode(),
                      "model.safetensors": b"not downloaded"}}
  yield from _start(repos, monkeypatch, tmp_path)


@pytest.fixture
def timm_hub(timm_files, bundle_files, monkeypatch, tmp_path):
  yield from _start({TIMM_REPO: timm_files[1], BUNDLE_REPO: bundle_files[1]}, monkeypatch, tmp_path)


def _start(repos, monkeypatch, tmp_path):
  import huggingface_hub.constants

  server = FakeHub(repos)
  monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
  monkeypatch.setenv("SW_ZOO_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # must stay empty: our cache is used
  monkeypatch.setenv("NO_PROXY", "127.0.0.1")
  for name in ("HF_HUB_OFFLINE", "SW_ZOO_OFFLINE", "HF_TOKEN"):
    monkeypatch.delenv(name, raising=False)
  # huggingface_hub read HF_HUB_OFFLINE at import; a value from the environment then would
  # refuse every request here.
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  yield server
  server.stop()


def _go_offline(server, monkeypatch, variable="HF_HUB_OFFLINE"):
  server.stop()
  monkeypatch.setenv(variable, "1")


# ---- a bundle repo --------------------------------------------------------------------------------


def test_bundle_repo_loads_caches_and_works_offline(fake_hub, bundle_files, tmp_path, monkeypatch):
  local = Tagger.from_bundle(bundle_files[0], backend="jax")
  image = sample_images(1)[0]
  tagger = sw_zoo.load_pretrained(f"hf-hub:{BUNDLE_REPO}", backend="jax", batch_size=2)
  np.testing.assert_allclose(tagger.scores(image), local.scores(image), atol=1e-6)

  cached = tmp_path / "cache" / "hf-hub" / "someone" / "tiny-tagger" / "main"
  assert tagger.bundle.path == str(cached)
  manifest = json.loads((cached / hub.MANIFEST).read_text())
  assert manifest["commit"] == fake_hub.commits[BUNDLE_REPO] and manifest["kind"] == "bundle"
  assert set(manifest["files"]) == set(bundle_files[1]) == set(fake_hub.fetched(BUNDLE_REPO))
  assert not os.path.exists(tmp_path / "hf_home")  # the hub's own cache was not used
  assert not [p for p in os.listdir(cached.parent) if p.endswith(".tmp")]

  # The same bundle names a warm start (and `sw-zoo eval` / `export` sources) too.
  params, described = warm_start.read_params(f"hf-hub:{BUNDLE_REPO}")
  assert described == f"params of bundle {cached}"
  assert model_source.load(f"hf-hub:{BUNDLE_REPO}").kind == "bundle"

  # A pinned revision is cached on its own.
  assert pretrained.resolve(f"hf-hub:{BUNDLE_REPO}@v1") == str(cached.parent / "v1")

  # Server gone, offline: served from the cache, each file's sha256 checked.
  _go_offline(fake_hub, monkeypatch)
  again = sw_zoo.load_pretrained(f"hf-hub:{BUNDLE_REPO}", backend="jax", batch_size=2)
  np.testing.assert_allclose(again.scores(image), local.scores(image), atol=1e-6)

  tags = cached / "selected_tags.csv"
  tags.write_bytes(tags.read_bytes() + b"\n")
  with pytest.raises(hub.CacheDamaged, match=f"{tags}: sha256 .* differs"):
    sw_zoo.load_pretrained(f"hf-hub:{BUNDLE_REPO}")


def test_offline_with_an_empty_cache_says_where_to_put_the_files(fake_hub, tmp_path, monkeypatch):
  target = tmp_path / "cache" / "hf-hub" / "someone" / "tiny-tagger" / "main"
  for variable in ("HF_HUB_OFFLINE", "SW_ZOO_OFFLINE"):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(pretrained.PretrainedNotAvailable) as err:
      sw_zoo.load_pretrained(f"hf-hub:{BUNDLE_REPO}")
    message = str(err.value)
    assert "\n" not in message and f"hf-hub:{BUNDLE_REPO}" in message and str(target) in message
    monkeypatch.delenv(variable)
  assert fake_hub.requests == []
  # Online, but HF_ENDPOINT answers like no Hub: the same error, with the client's reason.
  fake_hub.plain = True
  with pytest.raises(pretrained.PretrainedNotAvailable, match="could not be downloaded .*X-Repo-Commit"):
    sw_zoo.load_pretrained(f"hf-hub:{BUNDLE_REPO}")
  assert not os.path.exists(target)


def test_files_put_into_the_cache_by_hand_are_used_and_checked(fake_hub, bundle_files, tmp_path, monkeypatch):
  monkeypatch.setenv("SW_ZOO_OFFLINE", "1")
  target = hub.cache_path(f"hf-hub:{BUNDLE_REPO}")
  os.makedirs(target)
  for name, data in bundle_files[1].items():
    with open(os.path.join(target, name), "wb") as f:
      f.write(data)
  assert pretrained.resolve(f"hf-hub:{BUNDLE_REPO}") == target
  manifest = json.loads(open(os.path.join(target, hub.MANIFEST)).read())
  assert manifest["commit"] is None and set(manifest["files"]) == set(bundle_files[1])
  assert fake_hub.requests == []


def test_unknown_repos_and_unsupported_architectures_are_named(fake_hub, tmp_path):
  with pytest.raises(ConfigError, match="timm architecture 'vit_tiny_patch16_224' has no sw_zoo equivalent; "
                                        "supported: .*eca_nfnet_l0"):
    warm_start.read_params(f"hf-hub:{VIT_REPO}", model=TIMM_SPEC)
  with pytest.raises(ValueError, match="'vit_tiny_patch16_224' has no sw_zoo equivalent"):
    sw_zoo.load_pretrained(f"hf-hub:{VIT_REPO}")
  assert fake_hub.fetched(VIT_REPO) == ["config.json", "config.json"]  # checked before the weights
  assert not os.path.exists(hub.cache_path(f"hf-hub:{VIT_REPO}"))

  with pytest.raises(FileNotFoundError, match="hf-hub:someone/missing: no such repository"):
    sw_zoo.load_pretrained("hf-hub:someone/missing")
  with pytest.raises(ConfigError, match="the repository has no revision 'v9'"):
    warm_start.read_params(f"hf-hub:{BUNDLE_REPO}@v9")
  with pytest.raises(ValueError, match="expected hf-hub:owner/repo"):
    sw_zoo.load_pretrained("hf-hub:../etc")


# ---- timm weights ---------------------------------------------------------------------------------


def _expected(state_dict) -> dict[str, np.ndarray]:
  """timm's weights as our params, without the head."""
  params = convert_timm.convert_state_dict(state_dict, "test_nfnet", num_classes=0)
  return traverse_util.flatten_dict(params, sep="/")


@pytest.mark.slow  # ~25 s: a one-step training run
@needs_timm
def test_warm_start_from_a_timm_repo_starts_from_its_weights(timm_hub, timm_files, tiny_data, tmp_path,  # noqa: F811
                                                              monkeypatch):
  from sw_zoo.train.loop import train_and_evaluate

  name = f"hf-hub:{TIMM_REPO}"
  # The backbone frozen (the frozen-transfer recipe), so after a step it must still be exactly
  # timm's weights; the head is new, sized for our tags.
  backbone = r"^(stem|stages_\d+_\d+|final_conv)/"
  c = tiny_config(tiny_data, total_steps=1, eval_every_steps=0,
                  **{"model.name": "test_nfnet", "model.attn": "se", "init.checkpoint": name,
                     "init.freeze": backbone})
  c.batch_size = 8
  train_and_evaluate(c, str(tmp_path / "run"))
  after = restore_params(str(tmp_path / "run"), 1)
  expected = _expected(timm_files[2])
  assert set(after) - set(expected) == {"head/kernel", "head/bias"}
  assert all(np.array_equal(after[k], expected[k]) for k in expected)
  assert after["head/kernel"].shape == (expected["final_conv/kernel"].shape[-1], 65)
  assert sorted(timm_hub.fetched(TIMM_REPO)) == ["config.json", "model.safetensors"]

  # Second use: no server, offline, from the cache; then a damaged cached file is named.
  _go_offline(timm_hub, monkeypatch)
  params, described = warm_start.read_params(name, model=TIMM_SPEC)
  assert "timm test_nfnet weights" in described
  assert {"/".join(k) for k in params} == set(expected)
  assert all(np.array_equal(params[tuple(k.split("/"))], v) for k, v in expected.items())

  weights = os.path.join(hub.cache_path(name), "model.safetensors")
  with open(weights, "r+b") as f:
    f.seek(-4, os.SEEK_END)
    f.write(b"\0\0\0\1")
  with pytest.raises(hub.CacheDamaged, match=f"{weights}: sha256 .* differs .* delete {hub.cache_path(name)}"):
    warm_start.read_params(name, model=TIMM_SPEC)


@pytest.mark.slow  # ~30 s: a two-step training run
@needs_timm
def test_own_data_recipe_from_a_timm_repo_builds_its_network_and_unfreezes_on_schedule(
    timm_hub, timm_files, tiny_data, tmp_path):  # noqa: F811
  from configs import own_data
  from sw_zoo.train.loop import train_and_evaluate
  from sw_zoo.train.recipe import PRETRAINED_FREEZE
  from tests.test_train import set_keys

  # Only the Hub name: the recipe builds test_nfnet with SE (the weights' network), freezes the
  # stem and first two stages, and lets them train from half-way (step 1 of 2) on.
  c = set_keys(own_data.get_config(f"init=hf-hub:{TIMM_REPO}"), {
      "data.dir": tiny_data, "total_steps": 2, "batch_size": 8, "init.unfreeze_at": 0.5, "optim.warmup_epochs": 0.0,
      "checkpoint.every_steps": 1, "checkpoint.max_to_keep": 3, "checkpoint.async_save": False,
      "wandb.mode": "disabled"})
  train_and_evaluate(c, str(tmp_path / "run"))
  assert (c.model.name, c.model.act, c.model.attn) == ("test_nfnet", "silu", "se")
  assert c.init.freeze == PRETRAINED_FREEZE
  expected = _expected(timm_files[2])
  first, second = restore_params(str(tmp_path / "run"), 1), restore_params(str(tmp_path / "run"), 2)
  frozen = [k for k in expected if k.startswith(("stem/", "stages_0_", "stages_1_"))]
  trained = [k for k in expected if k not in frozen and k.endswith("/kernel")]
  assert frozen and trained
  assert all(np.array_equal(first[k], expected[k]) for k in frozen)  # held for the first step
  assert not all(np.array_equal(first[k], expected[k]) for k in trained)
  assert not all(np.array_equal(second[k], expected[k]) for k in frozen if k.endswith("/kernel"))  # then trained


@needs_timm
def test_timm_weights_must_fit_config_model_and_are_not_a_tagger(timm_hub, timm_files):
  name = f"hf-hub:{TIMM_REPO}"
  with pytest.raises(ConfigError, match="holds timm test_nfnet, .* Set --config.model.name=test_nfnet "
                                        "--config.model.act=silu --config.model.attn=se"):
    warm_start.read_params(name, model=ModelSpec(name="test_nfnet", num_tags=0, act="relu", attn="se"))
  with pytest.raises(ValueError, match="holds timm test_nfnet weights, not a tagger"):
    sw_zoo.load_pretrained(name)


@needs_timm
def test_local_timm_safetensors(timm_files, tmp_path):
  expected = _expected(timm_files[2])
  # A bare file: the architecture is config.model's.
  bare = tmp_path / "bare" / "weights.safetensors"
  bare.parent.mkdir()
  bare.write_bytes(timm_files[1]["model.safetensors"])
  params, _ = warm_start.read_params(str(bare), model=TIMM_SPEC)
  assert all(np.array_equal(params[tuple(k.split("/"))], v) for k, v in expected.items())
  # A downloaded repo (config.json beside it): the architecture is checked against config.model.
  repo = timm_files[0]
  for path in (repo, repo / "model.safetensors"):
    params, described = warm_start.read_params(str(path), model=TIMM_SPEC)
    assert "timm test_nfnet weights" in described and len(params) == len(expected)
  with pytest.raises(ConfigError, match="config.model builds a different network"):
    warm_start.read_params(str(repo), model=ModelSpec(name="l0", num_tags=0, act="silu", attn="eca"))
