"""The built-in synthetic dataset: vocabulary, tag statistics, determinism, missing labels."""

import os

import grain
import numpy as np
import pytest

from data_prep import synthetic
from sw_zoo import cli
from sw_zoo.data import dataset_info, records, vocab

SMALL = dict(num_train=64, num_val=24, image_size=32, seed=0, shard_size=16)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic_clean")
  synthetic.generate(out, **SMALL, workers=1, progress=False)
  return out


def _records(data_dir, split):
  source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, split))
  return [records.decode_record(source[i]) for i in range(len(source))]


def _shard_bytes(data_dir):
  info = dataset_info.read_dataset_info(data_dir)
  return {name: open(os.path.join(data_dir, name), "rb").read()
          for split in info["splits"].values() for name in split["shards"]}


def test_vocab_layout(clean_dir):
  tags = vocab.read_selected_tags(os.path.join(clean_dir, "selected_tags.csv"))
  assert len(tags) >= 60
  assert tags.names[:4] == ["general", "sensitive", "questionable", "explicit"]
  # WD order: ratings (9), then general (0), then characters (4), each a contiguous block.
  categories = tags.categories.tolist()
  assert categories == sorted(categories, key=[9, 0, 4].index)
  assert len(tags.category_indices(vocab.CATEGORY_CHARACTER)) >= 4
  assert tags == synthetic.tag_vocab(dict(zip(tags.names, tags.counts.tolist())))


def test_dataset_info_and_exactly_one_rating(clean_dir):
  info = dataset_info.read_dataset_info(clean_dir)
  assert info["num_labels"] == len(synthetic.tag_vocab())
  assert info["image_size"] == 32
  assert info["splits"]["train"]["num_examples"] == 64
  assert len(info["splits"]["train"]["shards"]) == 4
  for split, count in (("train", 64), ("validation", 24)):
    recs = _records(clean_dir, split)
    assert len(recs) == count
    for r in recs:
      assert np.sum(r["labels"] < 4) == 1, r
      assert records.decode_image(r["image"]).shape == (32, 32, 3)
  ids = [r["id"] for s in ("train", "validation") for r in _records(clean_dir, s)]
  assert len(set(ids)) == len(ids)


def test_counts_are_long_tailed():
  tags = synthetic.tag_vocab()
  counts = np.zeros(len(tags))
  for i in range(400):
    counts[synthetic.make_example(0, 0, i, image_size=32)["labels"]] += 1
  general = np.sort(counts[tags.category_indices(vocab.CATEGORY_GENERAL)])[::-1] / 400
  assert general[0] > 0.5  # Head: e.g. upper_object, circle.
  assert np.sum(general < 0.1) >= 15  # Long tail.
  assert general[0] / max(general[-1], 1 / 400) >= 10
  ratings = counts[:4]
  assert ratings.sum() == 400
  assert ratings[0] > ratings[1] > ratings[3]  # general > sensitive > explicit


def test_deterministic_and_independent_of_workers(clean_dir, tmp_path):
  # Two worker processes (spawned) must produce exactly the in-process bytes.
  synthetic.generate(tmp_path, **SMALL, workers=2, progress=False)
  assert _shard_bytes(tmp_path) == _shard_bytes(clean_dir)
  assert ((tmp_path / "selected_tags.csv").read_bytes()
          == (clean_dir / "selected_tags.csv").read_bytes())


def test_drop_tag_fraction_only_touches_train_labels(clean_dir, tmp_path):
  synthetic.generate(tmp_path, **SMALL, drop_tag_fraction=0.3, workers=1, progress=False)
  clean_train, noisy_train = _records(clean_dir, "train"), _records(tmp_path, "train")
  kept = dropped = 0
  for clean, noisy in zip(clean_train, noisy_train):
    assert noisy["image"] == clean["image"]
    np.testing.assert_array_equal(np.union1d(noisy["labels"], noisy["dropped"]), clean["labels"])
    assert not np.any(noisy["dropped"] < 4)  # The rating is never dropped.
    assert np.sum(noisy["labels"] < 4) == 1
    kept += np.sum(noisy["labels"] >= 4)
    dropped += len(noisy["dropped"])
  assert 0.22 < dropped / (kept + dropped) < 0.38
  for clean, noisy in zip(_records(clean_dir, "validation"), _records(tmp_path, "validation")):
    assert noisy == {**clean, "labels": noisy["labels"], "dropped": noisy["dropped"]}
    np.testing.assert_array_equal(noisy["labels"], clean["labels"])
    assert len(noisy["dropped"]) == 0


def test_rerun_is_noop_and_other_args_need_overwrite(tmp_path, caplog):
  info = synthetic.generate(tmp_path, **SMALL, workers=1, progress=False)
  mtimes = {p: os.stat(p).st_mtime_ns for p in tmp_path.iterdir()}
  with caplog.at_level("INFO"):
    assert synthetic.generate(tmp_path, **SMALL, workers=1, progress=False) == info
  assert "nothing to do" in caplog.text
  assert {p: os.stat(p).st_mtime_ns for p in tmp_path.iterdir()} == mtimes

  smaller = {**SMALL, "num_train": 20}
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic.generate(tmp_path, **smaller, workers=1, progress=False)
  new_info = synthetic.generate(tmp_path, **smaller, workers=1, overwrite=True, progress=False)
  assert new_info["splits"]["train"]["num_examples"] == 20
  # The replaced dataset's extra shards are gone; only the new ones remain.
  assert sorted(p.name for p in tmp_path.glob("*.array_record")) == sorted(
      new_info["splits"]["train"]["shards"] + new_info["splits"]["validation"]["shards"])


def test_cli(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["synthetic", "--help"])
  assert exit_info.value.code == 0
  assert "--drop-tag-fraction" in capsys.readouterr().out
  assert cli.main(["synthetic", "--out", str(tmp_path), "--num-train", "8", "--num-val", "4",
                         "--image-size", "32", "--workers", "1", "--no-progress"]) == 0
  assert dataset_info.read_dataset_info(tmp_path)["splits"]["validation"]["num_examples"] == 4
  assert cli.main(["synthetic", "--out", str(tmp_path), "--num-train", "9", "--workers", "1",
                         "--no-progress"]) == 2


def _interrupted_prepare_dir(path):
  """What an interrupted `prepare` leaves: shards and selected_tags.csv, no dataset.json."""
  (path / "_prepare").mkdir(parents=True)
  (path / "_prepare" / "state.json").write_text('{"fingerprint": "abc"}\n')
  (path / "train-00000-of-00002.array_record").write_bytes(b"user shard 0")
  (path / "selected_tags.csv").write_text("tag_id,name,category,count\n")
  return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _files(path):
  return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_refuses_a_directory_holding_someone_elses_data(tmp_path, capsys):
  from sw_zoo.data.atomic_file import OutputRefused
  data = tmp_path / "data"
  before = _interrupted_prepare_dir(data)
  with pytest.raises(OutputRefused, match="--force") as e:
    synthetic.generate(data, **SMALL, workers=1, progress=False)
  assert str(data) in str(e.value) and _files(data) == before
  assert cli.main(["synthetic", "--out", str(data), "--num-train", "8", "--num-val", "4",
                             "--image-size", "32", "--workers", "1", "--no-progress"]) == 2
  assert str(data) in capsys.readouterr().err and _files(data) == before
  # --force writes the synthetic set next to the files it does not own.
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  assert cli.main(["synthetic", "--out", str(other), "--num-train", "8", "--num-val", "4",
                             "--image-size", "32", "--workers", "1", "--no-progress",
                             "--force"]) == 0
  assert (other / "notes.txt").read_text() == "mine"
  assert not (other / synthetic.MARKER_FILENAME).exists()


def test_trainer_does_not_generate_over_an_interrupted_prepare(tmp_path):
  """Regression: config.data.synthetic.enabled used to generate into a data dir holding a
  user's shards (no dataset.json yet) and delete them."""
  import ml_collections
  from sw_zoo.cli.train import ensure_synthetic_dataset
  from sw_zoo.data.atomic_file import OutputRefused
  data = tmp_path / "data"
  before = _interrupted_prepare_dir(data)
  config = ml_collections.ConfigDict({"data": {"dir": str(data), "synthetic": {
      "enabled": True, "num_train": 8, "num_val": 4, "image_size": 32, "seed": 0,
      "drop_tag_fraction": 0.0}}})
  with pytest.raises(OutputRefused, match=str(data)):
    ensure_synthetic_dataset(config)
  assert _files(data) == before
  config.data.dir = str(tmp_path / "fresh")  # Absent: generated as before.
  ensure_synthetic_dataset(config)
  assert dataset_info.read_dataset_info(tmp_path / "fresh")["generator"]["name"] == synthetic.GENERATOR_NAME


def test_an_interrupted_generation_is_its_own_and_resumes(tmp_path, monkeypatch):
  calls = []
  real = synthetic._write_splits

  def interrupt(*args, **kwargs):
    calls.append(1)
    raise KeyboardInterrupt

  monkeypatch.setattr(synthetic, "_write_splits", interrupt)
  with pytest.raises(KeyboardInterrupt):
    synthetic.generate(tmp_path, **SMALL, workers=1, progress=False)
  assert (tmp_path / synthetic.MARKER_FILENAME).exists()
  (tmp_path / "train-00000-of-00009.array_record").write_bytes(b"partial")  # an old partial shard
  monkeypatch.setattr(synthetic, "_write_splits", real)
  info = synthetic.generate(tmp_path, **SMALL, workers=1, progress=False)
  assert info["splits"]["train"]["num_examples"] == SMALL["num_train"]
  assert not (tmp_path / synthetic.MARKER_FILENAME).exists()
  assert not (tmp_path / "train-00000-of-00009.array_record").exists()


# ---- correlated_noise: a careless annotator on train labels ----------------------------------

def _object_tags(obj, color=None):
  tags = {obj.kind, obj.size_tag, obj.zone}
  if not obj.is_character:
    tags.add(f"{color or obj.color}_object")
  return tags


def test_correlated_noise_off_is_byte_identical(clean_dir, tmp_path):
  info = synthetic.generate(tmp_path, **SMALL, correlated_noise=0.0, workers=1, progress=False)
  assert _shard_bytes(tmp_path) == _shard_bytes(clean_dir)
  assert (tmp_path / "selected_tags.csv").read_bytes() == (clean_dir / "selected_tags.csv").read_bytes()
  assert info["generator"] == dataset_info.read_dataset_info(clean_dir)["generator"]
  assert "label_noise" not in info["splits"]["train"]
  with pytest.raises(ValueError, match="correlated_noise"):
    synthetic.generate(tmp_path / "bad", **SMALL, correlated_noise=1.0, progress=False)


def test_annotator_that_sees_everything_tags_the_truth():
  from data_prep import synthetic_noise
  from data_prep.synthetic_scene import render_scene
  for i in range(150):
    scene = render_scene(np.random.default_rng([3, 0, i]), 32)
    assert synthetic_noise.seen_tags(scene, list(range(len(scene.placed)))) == scene.tags
    nobody = synthetic_noise.annotate(scene, np.random.default_rng(i), 0.0)
    assert nobody.tags == scene.tags and not nobody.missed and not nobody.confused


def test_correlated_noise_changes_train_labels_only_in_object_groups(clean_dir, tmp_path):
  from data_prep import synthetic_noise
  from data_prep.synthetic_scene import rating_of, render_scene
  from data_prep.synthetic_tags import COLOR_TAGS, COUNT_TAGS
  names = synthetic.tag_vocab().names
  # Two spawned workers, with boxes too: the records must be the in-process ones.
  info = synthetic.generate(tmp_path, **SMALL, correlated_noise=0.3, box=True, workers=2,
                            progress=False)
  assert info["generator"]["correlated_noise"] == 0.3 and info["generator"]["box"] is True
  noise = info["splits"]["train"]["label_noise"]
  assert noise["missed_objects"] > 0 and noise["dropped_tags"] > 0
  clean_val = _records(clean_dir, "validation")
  for clean, noisy in zip(clean_val, _records(tmp_path, "validation")):
    # Validation labels stay the truth.
    assert noisy == {**clean, "labels": noisy["labels"], "dropped": noisy["dropped"], "box": noisy["box"]}
    np.testing.assert_array_equal(noisy["labels"], clean["labels"])
    assert len(noisy["dropped"]) == 0
  missed_total = 0
  for i, (clean, noisy) in enumerate(zip(_records(clean_dir, "train"), _records(tmp_path, "train"))):
    expected = synthetic.make_example(0, 0, i, 32, box=True, correlated_noise=0.3)
    assert noisy["image"] == clean["image"]
    np.testing.assert_array_equal(noisy["labels"], expected["labels"])
    np.testing.assert_array_equal(noisy["box"], np.asarray(expected["box"], np.float32))
    truth = {names[k] for k in clean["labels"]}
    given, dropped = {names[k] for k in noisy["labels"]}, {names[k] for k in noisy["dropped"]}
    assert dropped == truth - given  # every lost true tag is recorded, nothing else
    assert given - truth <= set(COUNT_TAGS) | set(COLOR_TAGS)  # the only wrong tags added
    # Checked against the scene: what was lost comes in whole objects.
    scene = render_scene(np.random.default_rng([0, 0, i]), 32)
    assert rating_of(scene) in given and truth == scene.tags | {rating_of(scene)}
    note = synthetic_noise.annotate(scene, np.random.default_rng([0, 0, i, 2]), 0.3)
    missed_total += len(note.missed)
    seen = [k for k in range(len(scene.placed)) if k not in note.missed]
    still_justified = set().union(*[_object_tags(scene.placed[k].obj, note.confused.get(k))
                                    for k in seen])
    group_tags = set()
    for k in note.missed:  # each missed object's tags go together, unless another object has them
      group = _object_tags(scene.placed[k].obj) - still_justified
      assert group <= dropped, (i, k, group, dropped)
      group_tags |= group
    for k, color in note.confused.items():  # a misread colour: the true one out, the neighbour in
      true_color = f"{scene.placed[k].obj.color}_object"
      assert f"{color}_object" in given
      if true_color not in still_justified:
        assert true_color in dropped
        group_tags.add(true_color)
    assert dropped - group_tags <= set(COUNT_TAGS) | {"overlapping_objects", "outline", "drop_shadow"}
    if note.missed:
      assert COUNT_TAGS[len(scene.placed) - 1] in dropped
      if seen:
        assert COUNT_TAGS[len(seen) - 1] in given
    else:
      assert not dropped - group_tags
  assert missed_total == noise["missed_objects"]


def test_correlated_noise_rate_and_its_dependence_on_the_image():
  from data_prep import synthetic_noise
  from data_prep.synthetic_scene import object_contrast, render_scene
  missed = {"small_object": [], "medium_object": [], "large_object": []}
  by_contrast = {True: [], False: []}
  for i in range(800):
    scene = render_scene(np.random.default_rng([0, 0, i]), 32)
    note = synthetic_noise.annotate(scene, np.random.default_rng([0, 0, i, 2]), 0.3)
    for k, p in enumerate(scene.placed):
      missed[p.obj.size_tag].append(k in note.missed)
      by_contrast[object_contrast(scene, p) < 160].append(k in note.missed)
  rate = np.mean(sum(missed.values(), []))
  assert 0.26 < rate < 0.34, rate
  small, medium, large = (np.mean(missed[t]) for t in ("small_object", "medium_object", "large_object"))
  assert small > medium > large and small > 2.5 * large, (small, medium, large)
  assert np.mean(by_contrast[True]) > 1.3 * np.mean(by_contrast[False])
  from data_prep.synthetic_tags import COLORS
  neighbours = synthetic_noise.COLOR_NEIGHBOURS
  assert set(neighbours) == set(COLORS) and {c for g in neighbours.values() for c in g} <= set(COLORS)


def test_correlated_noise_cli_and_trainer_config(tmp_path):
  import ml_collections
  from sw_zoo.cli.train import ensure_synthetic_dataset
  out = tmp_path / "cli"
  assert cli.main(["synthetic", "--out", str(out), "--num-train", "8", "--num-val", "4",
                   "--image-size", "32", "--workers", "1", "--no-progress",
                   "--correlated-noise", "0.25"]) == 0
  assert dataset_info.read_dataset_info(out)["generator"]["correlated_noise"] == 0.25
  config = ml_collections.ConfigDict({"data": {"dir": str(tmp_path / "trainer"), "synthetic": {
      "enabled": True, "num_train": 8, "num_val": 4, "image_size": 32, "seed": 0,
      "drop_tag_fraction": 0.0, "box": False, "correlated_noise": 0.25}}})
  ensure_synthetic_dataset(config)
  trained = tmp_path / "trainer"
  assert dataset_info.read_dataset_info(trained)["generator"] == dataset_info.read_dataset_info(out)["generator"]
  assert _shard_bytes(trained) == _shard_bytes(out)
