"""gs:// end to end, against a real GCS emulator (fake-gcs-server) on 127.0.0.1.

The pod path as a TPU user meets it: `sw-zoo prepare --out gs://`, training with data and workdir
on gs:// (SIGKILLed and resumed to the same parameters as an uninterrupted run), the end-of-run
bundle, `sw-zoo export | eval | tag` and `load_pretrained` taking gs:// runs and bundles, each host
staging only its own shards, and the bad cases (missing bucket, missing dataset.json, the store
going away mid-checkpoint) giving one error that names the URL and losing nothing.
"""
import json
import os
import subprocess

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.gcs_emulator import GcsEmulator
from sw_zoo import cli, storage
from sw_zoo.data import pipeline
from sw_zoo.train.checkpointing import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs_store"))).start()
  emulator.bucket = emulator.make_bucket("sw-zoo-test")
  yield emulator
  emulator.close()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
  """A fresh local mirror per test: what a test reads must come from the store."""
  monkeypatch.setenv("SW_ZOO_CACHE", str(tmp_path / "cache"))


def _synthetic(url, **kw):
  from data_prep import synthetic

  args = dict(num_train=40, num_val=12, image_size=32, seed=1, shard_size=8, workers=1, progress=False)
  args.update(kw)
  return synthetic.generate(url, **args)


def _generations(url):
  return {rel: info.get("generation") for rel, info in storage.remote_files(url).items()}


def test_push_pull_and_markers(gcs, tmp_path):
  url = f"{gcs.bucket}/unit/tree"
  local = tmp_path / "tree"
  (local / "sub").mkdir(parents=True)
  (local / "sub" / "a.bin").write_bytes(b"a" * 1000)
  (local / "marker.json").write_text("{}")
  assert storage.push(str(local), url, last=["marker.json"]) == 2
  assert storage.push(str(local), url, last=["marker.json"]) == 0  # unchanged: nothing uploaded
  before = _generations(url)
  (local / "sub" / "a.bin").write_bytes(b"b" * 1000)
  assert storage.push(str(local), url, last=["marker.json"]) == 2  # data changed: marker re-uploaded after it
  after = _generations(url)
  assert after["marker.json"] != before["marker.json"] and after["sub/a.bin"] != before["sub/a.bin"]
  mirror = storage.pull(url)
  assert open(os.path.join(mirror, "sub", "a.bin"), "rb").read() == b"b" * 1000
  assert storage.url_of(mirror) == url
  # A download that fails its checksum never replaces the mirror's copy.
  storage.write_bytes(f"{url}/sub/a.bin", b"c" * 1000)
  listing = storage.remote_files(url)
  listing["sub/a.bin"] = dict(listing["sub/a.bin"], md5Hash="AAAAAAAAAAAAAAAAAAAAAA==")
  with pytest.raises(storage.StorageError, match="fails its md5 check"):
    storage.pull(url, listing=listing)
  assert open(os.path.join(mirror, "sub", "a.bin"), "rb").read() == b"b" * 1000
  assert not [n for n in os.listdir(os.path.join(mirror, "sub")) if n.endswith(".part")]


def test_each_host_stages_only_its_shards_and_the_cache_is_bounded(gcs, tmp_path, monkeypatch):
  url = f"{gcs.bucket}/staged/syn"
  _synthetic(url)
  monkeypatch.setenv("SW_ZOO_CACHE", str(tmp_path / "host1"))  # another machine: nothing mirrored
  ds = pipeline.make_train_dataset(url, global_batch_size=4, image_size=32, seed=0, process_index=1, process_count=2)
  assert next(iter(ds))["image"].shape == (2, 32, 32, 3)
  staged = sorted(n for n in os.listdir(storage.mirror_path(url)) if n.endswith(".array_record"))
  # 40 examples in shards of 8: process 1 of 2 reads examples 20..39, in shards 2, 3 and 4.
  assert staged == [f"train-{i:05d}-of-00005.array_record" for i in (2, 3, 4)]
  # Its batches are those of the same process reading a local copy of the whole dataset.
  local = tmp_path / "local_copy"
  _synthetic(str(local))
  ref = pipeline.make_train_dataset(str(local), global_batch_size=4, image_size=32, seed=0, process_index=1,
                                    process_count=2)
  np.testing.assert_array_equal(next(iter(ds))["image"], next(iter(ref))["image"])

  # Bounded: another dataset evicts this one's shards when both do not fit ...
  other = f"{gcs.bucket}/staged/other"
  monkeypatch.setenv("SW_ZOO_CACHE", str(tmp_path / "writer"))
  _synthetic(other, seed=2)
  monkeypatch.setenv("SW_ZOO_CACHE", str(tmp_path / "host1"))
  size = sum(os.path.getsize(os.path.join(storage.mirror_path(url), n)) for n in staged)
  monkeypatch.setenv("SW_ZOO_CACHE_MAX_GB", str(size * 1.9 / 1e9))
  pipeline.make_train_dataset(other, global_batch_size=4, image_size=32, seed=0, process_index=1, process_count=2)
  assert not [n for n in os.listdir(storage.mirror_path(url)) if n.endswith(".array_record")]
  # ... and a dataset that cannot fit is refused with what it needs and the ways out.
  monkeypatch.setenv("SW_ZOO_CACHE_MAX_GB", "0.000001")
  with pytest.raises(OSError, match=r"gs://sw-zoo-test/staged/syn: this process needs .* mount the bucket"):
    pipeline.make_train_dataset(url, global_batch_size=4, image_size=32, seed=0)


def _captioned_folder(root, n=24, captions=True):
  """n small PNGs with 3 colour tags (+ rating) as .txt captions: a user's own folder."""
  colours = {"red_square": (220, 30, 30), "green_square": (30, 200, 30), "blue_square": (30, 30, 220)}
  os.makedirs(root)
  rng = np.random.default_rng(0)
  for i in range(n):
    image = np.full((40, 40, 3), 255, np.uint8)
    names = [c for c in colours if rng.random() < 0.5] or ["red_square"]
    for k, name in enumerate(names):
      image[4 + 12 * k:14 + 12 * k, 4:36] = colours[name]
    Image.fromarray(image).save(os.path.join(root, f"{i:03d}.png"))
    if captions:
      with open(os.path.join(root, f"{i:03d}.txt"), "w") as f:
        f.write(", ".join(names + ["rating:g"]))
  return str(root)


def test_prepare_to_gcs_resumes_on_another_machine(gcs, tmp_path, monkeypatch):
  from data_prep import convert
  from data_prep.sources.folder import FolderSource
  from tests.test_data_prep import interrupt_after_shards

  root = _captioned_folder(tmp_path / "imgs", n=24)
  options = convert.PrepareOptions(shard_size=4, val_permille=250)
  url = f"{gcs.bucket}/resume/data"
  interrupt_after_shards(monkeypatch, 2)
  with pytest.raises(KeyboardInterrupt):
    convert.prepare(FolderSource(root), url, options, workers=1, progress=False)
  uploaded = storage.remote_files(url)
  assert "dataset.json" not in uploaded  # incomplete: no marker
  assert sum(n.endswith(".array_record") for n in uploaded) == 2 and not [n for n in uploaded if n.endswith(".tmp")]
  monkeypatch.setattr(convert, "_after_shard_hook", None)
  monkeypatch.setenv("SW_ZOO_CACHE", str(tmp_path / "other_machine"))
  report = convert.prepare(FolderSource(root), url, options, workers=1, progress=False)
  assert report["resumed_shards"] == 2
  local = tmp_path / "local"
  convert.prepare(FolderSource(root), str(local), options, workers=1, progress=False)
  remote = storage.remote_files(url)
  for name in os.listdir(local):
    if name.endswith(".array_record") or name == "selected_tags.csv":
      assert storage.read_bytes(f"{url}/{name}") == (local / name).read_bytes(), name
  assert {n for n in remote if n.endswith(".array_record")} == {n for n in os.listdir(local) if n.endswith(".array_record")}


def test_missing_bucket_and_missing_dataset_name_the_url(gcs, tmp_path, capsys):
  from tests.test_train import tiny_config
  from sw_zoo.train.loop import train_and_evaluate

  root = _captioned_folder(tmp_path / "imgs", n=4)
  assert cli.main(["prepare", "folder", root, "--out", "gs://no-such-bucket/data", "--workers", "1",
                   "--no-progress"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "gs://no-such-bucket/data: bucket 'no-such-bucket' does not exist" in err[0], err
  assert sorted(os.listdir(root)) == sorted(f"{i:03d}.{e}" for i in range(4) for e in ("png", "txt"))
  assert not os.path.exists(storage.mirror_path("gs://no-such-bucket/data"))
  with pytest.raises(FileNotFoundError, match=r"no dataset.json in gs://sw-zoo-test/empty"):
    train_and_evaluate(tiny_config(f"{gcs.bucket}/empty"), str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match=r"gs://nope-bucket/data: bucket 'nope-bucket' does not exist"):
    train_and_evaluate(tiny_config("gs://nope-bucket/data"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_store_gone_mid_checkpoint_keeps_the_previous_one(gcs):
  workdir = f"{gcs.bucket}/outage/run"
  state = {"w": jnp.arange(1000.0), "step": jnp.int32(2)}
  it = iter(grain.MapDataset.range(10).to_iter_dataset())
  next(it)
  ckpt = Checkpointer(workdir, every_steps=2, max_to_keep=3, async_save=True)
  ckpt.save(2, state, it)
  ckpt.wait()
  gcs.stop()  # the store goes away before step 4's write can finish
  try:
    with pytest.raises(OSError, match=r"gs://sw-zoo-test/outage/run/checkpoints: writing .* not committed"):
      ckpt.save(4, dict(state, w=state["w"] * 2), it)
      ckpt.wait()
  finally:
    gcs.start()
  try:
    ckpt.close()
  except OSError:
    pass  # the failed save may be reported again; nothing more is written
  fresh = Checkpointer(workdir, every_steps=2, max_to_keep=3, async_save=False)
  try:
    assert fresh.latest_step() == 2
    np.testing.assert_array_equal(fresh.restore_arrays()["w"], np.arange(1000.0))
  finally:
    fresh.close()


def _committed_steps(workdir):
  names = set(storage.remote_files(f"{workdir}/checkpoints")) if storage.exists(f"{workdir}/checkpoints") else set()
  return sorted(int(n.split("/")[0]) for n in names if n.endswith("/commit_success.txt") and n.count("/") == 1)


@pytest.mark.slow
def test_prepare_train_kill_resume_export_eval_tag_on_gcs(gcs, tmp_path, capsys):
  from tests.test_multihost import assert_same_params, child_env, final_params, overrides, sigkill_when, trainer_cmd
  from sw_zoo.inference import bundle as bundle_lib
  from sw_zoo.inference.pretrained import load_pretrained

  bucket = gcs.bucket
  data = f"{bucket}/e2e/data"
  root = _captioned_folder(tmp_path / "imgs", n=48)
  prepare = ["prepare", "folder", root, "--out", data, "--workers", "1", "--val-permille", "250", "--shard-size",
             "8", "--no-progress"]
  assert cli.main(prepare) == 0
  written = _generations(data)
  assert {"dataset.json", "selected_tags.csv", "report.json"} <= set(written), sorted(written)
  assert sum(n.endswith(".array_record") for n in written) >= 5
  assert cli.main(prepare) == 0  # a rerun is a no-op: nothing in the bucket is rewritten
  assert _generations(data) == written
  capsys.readouterr()

  total = 16
  o = overrides(data, total, **{"checkpoint.every_steps": 2, "checkpoint.max_to_keep": 2,
                                "checkpoint.async_save": True})  # evaluated once, at the end
  env = child_env(8, str(tmp_path / "jax_cache"))
  run = f"{bucket}/e2e/run"

  def train(workdir, cache, **extra):
    done = subprocess.run(trainer_cmd(workdir, dict(o, **extra)), cwd=REPO, env=dict(env, SW_ZOO_CACHE=cache),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Final (step {total})" in done.stdout, done.stdout + done.stderr
    return done.stdout

  killed_log = sigkill_when(trainer_cmd(run, o), dict(env, SW_ZOO_CACHE=str(tmp_path / "c1")),
                            tmp_path / "killed.log", lambda: [s for s in _committed_steps(run) if s >= 4], poll=0.2)
  done = _committed_steps(run)
  assert done and 4 <= done[-1] < total, (done, killed_log)
  # Resumed on "another machine" (a fresh mirror): shards and state come from the bucket.
  assert f"Resumed from checkpoint at step {done[-1]}" in train(run, str(tmp_path / "c2"))
  # The uninterrupted run also writes a profile of 2 steps into its gs:// workdir.
  train(f"{bucket}/e2e/full", str(tmp_path / "c3"), **{"profile.steps": 2, "profile.skip_steps": 3})
  assert [n for n in storage.remote_files(f"{bucket}/e2e/full/profile") if n.endswith(".xplane.pb")]

  assert_same_params(final_params(f"{bucket}/e2e/full", total), final_params(run, total))
  logged = [json.loads(line)["step"] for line in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
  assert logged[-1] == total and json.loads(storage.read_text(f"{run}/config.json"))["data"]["dir"] == data
  assert "micro_f1" in json.loads(storage.read_text(f"{run}/eval_summary.json"))
  assert bundle_lib.is_bundle(f"{run}/bundle")  # the end-of-run bundle, uploaded config.json last

  exported = f"{bucket}/e2e/exported"
  assert cli.main(["export", run, "--out", exported]) == 0
  assert bundle_lib.is_bundle(exported)
  # One named step of a gs:// run (not the latest); the bundle records the run by its URL.
  assert cli.main(["export", f"{run}/checkpoints/{total - 2}", "--out", f"{bucket}/e2e/earlier"]) == 0
  made_from = json.loads(storage.read_text(f"{bucket}/e2e/earlier/config.json"))["source"]
  assert (made_from["workdir"], made_from["step"]) == (run, total - 2)
  assert cli.main(["eval", run, "--no-plots", "--no-progress", "--timing-repeats", "0"]) == 0
  assert "micro_f1" in json.loads(storage.read_text(f"{run}/eval_validation/eval_summary.json"))

  photos = _captioned_folder(tmp_path / "to_tag", n=3, captions=False)
  assert cli.main(["tag", photos, "--model", exported, "--no-progress"]) == 0
  assert sorted(n for n in os.listdir(photos) if n.endswith(".txt")) == ["000.txt", "001.txt", "002.txt"]
  # Curation reads gs:// datasets and models too; training-split predictions of the run's own
  # model are refused as in-sample, which needs the run's config.json from the bucket.
  assert cli.main(["find-missing-tags", "--data", data, "--model", exported, "--predict-only", "--out",
                   f"{bucket}/e2e/fmt", "--no-progress"]) == 0
  assert storage.isfile(f"{bucket}/e2e/fmt/predictions/meta.json")
  assert cli.main(["find-missing-tags", "--data", data, "--model", run, "--split", "train", "--predict-only",
                   "--out", str(tmp_path / "fmt2"), "--no-progress"]) == 2
  assert "in-sample" in capsys.readouterr().err
  assert cli.main(["index", data, "--model", exported, "--out", f"{bucket}/e2e/index", "--no-progress"]) == 0
  assert storage.isfile(f"{bucket}/e2e/index/index.json")
  # The index records its model by URL, so searching it by image works from any machine.
  assert json.loads(storage.read_text(f"{bucket}/e2e/index/index.json"))["model"] == exported
  assert cli.main(["search", f"{bucket}/e2e/index", "--image", os.path.join(photos, "000.png"), "--k", "3"]) == 0
  assert cli.main(["inspect", data, "--samples", "0"]) == 0
  assert f"{data}: source folder" in capsys.readouterr().out
  tagger = load_pretrained(run)  # a run's workdir stands for its bundle, on gs:// too
  assert tagger.bundle.spec.num_tags == len(storage.read_text(f"{data}/selected_tags.csv").splitlines()) - 1
