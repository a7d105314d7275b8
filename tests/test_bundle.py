"""Bundles: round trip, every kind of damage named, atomic replacement, `load_pretrained` through
the registry and cache (file:// URLs only: nothing touches the network), and transfer learning
from a finished run's bundle."""
import hashlib
import json
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

import sw_zoo
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo import cli
from sw_zoo.inference import pretrained
from sw_zoo.inference.tagger import Tagger
from sw_zoo.train import warm_start
from tests.test_tagger import IMAGE_SIZE, make_bundle, sample_images, sample_vocab
from tests.test_train import tiny_config, tiny_data  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory):
  return make_bundle(tmp_path_factory.mktemp("bundle") / "source", threshold=0.4)


def _copy(src, tmp_path, name="copy"):
  dst = tmp_path / name
  shutil.copytree(src, dst)
  return dst


def test_round_trip_and_schema(source_bundle):
  b = bundle_lib.read_bundle(source_bundle)
  config = json.loads(open(os.path.join(source_bundle, "config.json")).read())
  assert config["format"] == "sw_zoo.bundle" and config["format_version"] == 1
  assert config["model"] == {"name": "nano", "act": "silu", "attn": "eca", "dtype": "float32",
                             "num_tags": len(sample_vocab()), "overrides": {}}
  assert config["image_size"] == IMAGE_SIZE and config["preprocessing"]["pad"] == "white_square"
  assert config["thresholds"] == {"method": "config", "default": 0.4, "by_category": {"general": 0.4, "character": 0.4}}
  assert config["tags"]["by_category"] == {"rating": 4, "general": 6, "character": 2}
  assert config["params"]["tensors"]["head/kernel"] == {"shape": [64, 12], "dtype": "float32"}
  assert b.tags == sample_vocab() and b.image_size == IMAGE_SIZE
  assert sorted(os.listdir(source_bundle)) == ["config.json", "params.msgpack", "selected_tags.csv"]
  # Written again from what was read: byte-identical params.
  again = bundle_lib.write_bundle(os.path.join(os.path.dirname(source_bundle), "again"), params=b.params, spec=b.spec,
                                  image_size=b.image_size, tags=b.tags, thresholds=b.thresholds)
  assert open(os.path.join(again, "params.msgpack"), "rb").read() == open(os.path.join(source_bundle, "params.msgpack"), "rb").read()


def test_damage_is_named(source_bundle, tmp_path):
  flipped = _copy(source_bundle, tmp_path, "flipped")
  data = bytearray((flipped / "params.msgpack").read_bytes())
  data[len(data) // 2] ^= 0xFF
  (flipped / "params.msgpack").write_bytes(bytes(data))
  with pytest.raises(bundle_lib.BundleError, match=r"params.msgpack: sha256 .* does not match"):
    bundle_lib.read_bundle(flipped)

  truncated = _copy(source_bundle, tmp_path, "truncated")
  (truncated / "params.msgpack").write_bytes((truncated / "params.msgpack").read_bytes()[:-100])
  with pytest.raises(bundle_lib.BundleError, match="truncated or damaged"):
    bundle_lib.read_bundle(truncated)

  # A config that no longer describes its params: another model, and a tensor table edited.
  wrong_model = _copy(source_bundle, tmp_path, "wrong_model")
  config = json.loads((wrong_model / "config.json").read_text())
  config["model"]["name"] = "tiny"
  (wrong_model / "config.json").write_text(json.dumps(config))
  with pytest.raises(bundle_lib.BundleError, match=r"do not fit the model(.|\n)*stem/conv1/kernel"):
    bundle_lib.read_bundle(wrong_model)
  config = json.loads((_copy(source_bundle, tmp_path, "wrong_table") / "config.json").read_text())
  config["params"]["tensors"]["head/bias"] = {"shape": [13], "dtype": "float32"}
  (tmp_path / "wrong_table" / "config.json").write_text(json.dumps(config))
  with pytest.raises(bundle_lib.BundleError, match=r"head/bias: params.msgpack has \[12\] float32, config.json"):
    bundle_lib.read_bundle(tmp_path / "wrong_table")

  fewer_tags = _copy(source_bundle, tmp_path, "fewer_tags")
  lines = (fewer_tags / "selected_tags.csv").read_text().splitlines()
  (fewer_tags / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n")
  with pytest.raises(bundle_lib.BundleError, match="11 tags, but the model has 12 outputs"):
    bundle_lib.read_bundle(fewer_tags)

  newer = _copy(source_bundle, tmp_path, "newer")
  config = json.loads((newer / "config.json").read_text())
  config["format_version"] = 99
  (newer / "config.json").write_text(json.dumps(config))
  with pytest.raises(bundle_lib.BundleError, match="format_version 99 is newer"):
    bundle_lib.read_bundle(newer)
  (newer / "config.json").write_text('{"format": "sw_zoo.bun')
  with pytest.raises(bundle_lib.BundleError, match="not valid JSON"):
    bundle_lib.read_bundle(newer)
  with pytest.raises(bundle_lib.BundleError, match="no config.json"):
    bundle_lib.read_bundle(tmp_path)


def test_write_refuses_params_that_do_not_fit(source_bundle, tmp_path):
  b = bundle_lib.read_bundle(source_bundle)
  flat = traverse_util.flatten_dict(b.params)
  flat[("head", "bias")] = flat[("head", "bias")].astype(np.float64)
  with pytest.raises(bundle_lib.BundleError, match=r"head/bias: the params has \[12\] float64"):
    bundle_lib.write_bundle(tmp_path / "out", params=traverse_util.unflatten_dict(flat), spec=b.spec,
                            image_size=b.image_size, tags=b.tags)
  assert not os.listdir(tmp_path)


def test_replacement_is_atomic(source_bundle, tmp_path):
  out = tmp_path / "out"
  own = {"is_own": lambda p: set(os.listdir(p)) <= {"old", "new"}, "what": "test output"}
  bundle_lib.replace_dir(str(out), lambda d: open(os.path.join(d, "old"), "w").close(), **own)

  def crash(directory):
    open(os.path.join(directory, "half"), "w").close()
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    bundle_lib.replace_dir(str(out), crash, **own)
  assert os.listdir(out) == ["old"] and os.listdir(tmp_path) == ["out"]  # old kept, temp removed
  bundle_lib.replace_dir(str(out), lambda d: open(os.path.join(d, "new"), "w").close(), **own)
  assert os.listdir(out) == ["new"] and os.listdir(tmp_path) == ["out"]


# ---- load_pretrained ---------------------------------------------------------------------------


def _archive(bundle_dir, path, kind):
  if kind == "tar.gz":
    with tarfile.open(path, "w:gz") as tar:
      tar.add(bundle_dir, arcname=".")
  else:  # a zip with the bundle inside one folder, as a GitHub release asset might be
    with zipfile.ZipFile(path, "w") as zf:
      for name in os.listdir(bundle_dir):
        zf.write(os.path.join(bundle_dir, name), f"my_tagger/{name}")
  return path, hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def registry(monkeypatch):
  monkeypatch.setattr(pretrained, "REGISTRY", {})
  monkeypatch.delenv("SW_ZOO_OFFLINE", raising=False)
  return pretrained.REGISTRY


def _no_network(*args, **kwargs):
  raise urllib.error.URLError("network is unreachable")


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_registered_name_downloads_verifies_and_caches(source_bundle, tmp_path, registry, monkeypatch, kind):
  archive, sha = _archive(source_bundle, str(tmp_path / f"tagger.{kind}"), kind)
  pretrained.register("test-tagger", "file://" + archive, sha)
  cache = tmp_path / "cache"
  tagger = sw_zoo.load_pretrained("test-tagger", cache_dir=str(cache), batch_size=2)
  assert isinstance(tagger, Tagger) and tagger.tags == sample_vocab()
  cached = cache / "test-tagger" / sha[:16]
  assert tagger.bundle.path == str(cached) and sorted(os.listdir(cached)) == sorted(os.listdir(source_bundle))
  assert not [p for p in os.listdir(cache / "test-tagger") if p.endswith(".tmp")]
  # Cached: works with the network gone (and the archive gone), through $SW_ZOO_CACHE too.
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  os.remove(archive)
  monkeypatch.setenv("SW_ZOO_CACHE", str(cache))
  again = sw_zoo.load_pretrained("test-tagger", batch_size=2)
  image = sample_images(1)[0]
  np.testing.assert_allclose(again.scores(image), Tagger.from_bundle(source_bundle).scores(image), atol=1e-6)


def test_sha256_mismatch_caches_nothing(source_bundle, tmp_path, registry):
  archive, sha = _archive(source_bundle, str(tmp_path / "tagger.tar.gz"), "tar.gz")
  pretrained.register("test-tagger", "file://" + archive, "0" * 64)
  with pytest.raises(bundle_lib.BundleError, match=f"sha256 {sha}, the registry says 0000"):
    pretrained.load_pretrained("test-tagger", cache_dir=str(tmp_path / "cache"))
  assert os.listdir(tmp_path / "cache" / "test-tagger") == []


def test_uncached_and_offline_errors_say_what_and_where(tmp_path, registry, monkeypatch):
  url = "https://example.invalid/tagger.tar.gz"
  pretrained.register("test-tagger", url, "a" * 64)
  cache = tmp_path / "cache"
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  with pytest.raises(pretrained.PretrainedNotAvailable) as err:
    pretrained.load_pretrained("test-tagger", cache_dir=str(cache))
  message = str(err.value)
  assert "'test-tagger'" in message and url in message and str(cache / "test-tagger" / ("a" * 16)) in message
  monkeypatch.setenv("SW_ZOO_OFFLINE", "1")
  with pytest.raises(pretrained.PretrainedNotAvailable, match="offline mode"):
    pretrained.load_pretrained("test-tagger", cache_dir=str(cache))
  with pytest.raises(FileNotFoundError, match="neither a bundle directory nor a registered name; known names: test-tagger"):
    pretrained.load_pretrained("other-tagger")
  with pytest.raises(ValueError, match="64 hex digits"):
    pretrained.register("bad", url, "abc")


# ---- Training writes a bundle; a new run with another tag set starts from it ----------------------


def _folder_dataset(root, out):
  """A small dataset with its own tag set (3 colour tags + ratings), through `sw-zoo prepare`."""
  colours = {"red_square": (220, 30, 30), "green_square": (30, 200, 30), "blue_square": (30, 30, 220)}
  os.makedirs(root)
  rng = np.random.default_rng(0)
  for i in range(64):
    image = np.full((40, 40, 3), 255, np.uint8)
    names = [n for n in colours if rng.random() < 0.5] or ["red_square"]
    for k, name in enumerate(names):
      image[4 + 12 * k:14 + 12 * k, 4:36] = colours[name]
    Image.fromarray(image).save(os.path.join(root, f"{i:03d}.png"))
    with open(os.path.join(root, f"{i:03d}.txt"), "w") as f:
      f.write(", ".join(names + ["rating:g"]))
  assert cli.main(["prepare", "folder", root, "--out", out, "--workers", "1", "--val-permille", "250",
                   "--no-progress"]) == 0
  return out


def trained_source_run(tmp_path_factory, data_dir: str) -> str:
  """The workdir of a 3-step tiny run (bundle included), trained once per test session and shared
  by the tests that need a trained model (here and tests/test_onnx.py). Keyed by a path in the
  session's temp root: pytest may import this file twice (as test_bundle and tests.test_bundle),
  so a module-level cache would not be shared."""
  workdir = os.path.join(str(tmp_path_factory.getbasetemp()), "shared_source_run")
  if not bundle_lib.is_bundle(os.path.join(workdir, "bundle")):  # the bundle is written last
    from sw_zoo.train.loop import train_and_evaluate

    shutil.rmtree(workdir, ignore_errors=True)
    train_and_evaluate(tiny_config(data_dir, total_steps=3, eval_every_steps=0), workdir)
  return workdir


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_data):  # noqa: F811
  return trained_source_run(tmp_path_factory, tiny_data)


def restore_params(workdir: str, step: int) -> dict[str, np.ndarray]:
  """{param path: array} of a run's checkpoint at `step` (what training actually ended with)."""
  from sw_zoo.train.checkpointing import Checkpointer

  ckpt = Checkpointer(workdir, every_steps=1, max_to_keep=2)
  try:
    return traverse_util.flatten_dict(ckpt.restore_arrays(step)["params"], sep="/")
  finally:
    ckpt.close()


@pytest.mark.slow
def test_training_writes_a_bundle_and_transfer_starts_from_it(source_run, tmp_path):
  from sw_zoo.train.loop import train_and_evaluate

  bundle_dir = os.path.join(source_run, "bundle")
  b = bundle_lib.read_bundle(bundle_dir)
  assert b.config["source"]["step"] == 3 and b.config["source"]["weights"] == "params"
  # Thresholds tuned on the final validation pass (configs/common.py: eval.tune_thresholds=best_f1).
  assert b.config["thresholds"]["method"] == "best_f1" and b.config["thresholds"]["split"] == "validation"
  assert set(b.config["thresholds"]["by_category"]) <= {"rating", "general", "character"}
  assert b.spec.name == "tiny" and b.image_size == 32
  before = traverse_util.flatten_dict(b.params, sep="/")
  final = restore_params(source_run, 3)
  assert before.keys() == final.keys() and all(np.array_equal(before[k], final[k]) for k in final)
  assert warm_start.read_params(bundle_dir)[1] == f"params of bundle {bundle_dir}"

  # A new run on another tag set, initialised from the bundle, with the stem and stage 0 frozen.
  other = _folder_dataset(str(tmp_path / "colours"), str(tmp_path / "colours_data"))
  freeze = r"^(stem|stages_0_\d+)/"
  c = tiny_config(other, total_steps=2, eval_every_steps=0,
                  **{"init.checkpoint": bundle_dir, "init.new_head": True, "init.freeze": freeze})
  c.batch_size = 8
  train_and_evaluate(c, str(tmp_path / "transfer"))
  after = restore_params(str(tmp_path / "transfer"), 2)
  frozen = [k for k in after if re.match(freeze, k)]
  trained = [k for k in after if not re.match(freeze, k) and not k.startswith("head/")]
  assert frozen and all(np.array_equal(after[k], before[k]) for k in frozen)
  assert any(not np.array_equal(after[k], before[k]) for k in trained)
  assert after["head/kernel"].shape[-1] == 7 != before["head/kernel"].shape[-1]  # 4 ratings + 3 colours
