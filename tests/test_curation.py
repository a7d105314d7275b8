"""Curator tools: confident-learning label issues (equal to cleanlab's), `sw-zoo folds`,
`sw-zoo find-missing-tags` held-out and cross-validated, and `sw-zoo index` / `sw-zoo search`."""
import csv
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo import cli
from sw_zoo.curation import embedding_index, split_labels
from sw_zoo.curation.label_issues import find_label_issues, flag_matrix
from tests.test_tagger import IMAGE_SIZE, random_params


# ---- The algorithm ---------------------------------------------------------------------------


def _noisy_problem(seed, n, t, flip=0.05, spread=1.2):
  rng = np.random.default_rng(seed)
  truth = rng.random((n, t)) < rng.uniform(0.02, 0.5, t)
  given = truth ^ (rng.random((n, t)) < flip)
  probs = 1 / (1 + np.exp(-(np.where(truth, 1.5, -1.5) + rng.normal(0, spread, (n, t)))))
  return truth, given, probs


@pytest.mark.parametrize("seed", range(4))
def test_flags_exactly_what_cleanlab_flags(seed):
  from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

  rng = np.random.default_rng(100 + seed)
  n, t = int(rng.integers(60, 700)), int(rng.integers(3, 25))
  _, given, probs = _noisy_problem(seed, n, t)
  given[:, 0] = False  # a tag nobody has
  given[:, 1] = False
  given[3, 1] = True  # a tag exactly one image has (never pruned)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cleanlab warns about the tiny classes, which is the point
    expected = find_multilabel_issues_per_class([list(np.flatnonzero(r)) for r in given], probs)
  found = find_label_issues(given, probs, chunk_rows=37)  # chunking must not change anything
  np.testing.assert_array_equal(flag_matrix(found, given.shape), expected)
  # Flags point the right way and are ordered by label quality.
  assert np.all(given[found.rows, found.tags] != found.missing)
  assert np.all(np.diff(found.quality) >= 0)
  np.testing.assert_allclose(found.quality, np.where(found.missing, 1 - found.prob, found.prob))


def test_recovers_dropped_tags_from_informative_predictions():
  truth, _, probs = _noisy_problem(7, 3000, 12, flip=0.0, spread=0.8)
  rng = np.random.default_rng(1)
  dropped = truth & (rng.random(truth.shape) < 0.1)
  found = find_label_issues(truth & ~dropped, probs)
  flagged = np.zeros_like(truth)
  flagged[found.rows[found.missing], found.tags[found.missing]] = True
  precision = (flagged & dropped).sum() / flagged.sum()
  recall = (flagged & dropped).sum() / dropped.sum()
  assert precision > 0.6 and recall > 0.6, (precision, recall)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="same"):
    find_label_issues(np.zeros((4, 3), bool), np.zeros((4, 2)))
  probs = np.full((4, 3), 0.5)
  probs[2, 1] = np.nan
  with pytest.raises(ValueError, match="rows 0-3"):
    find_label_issues(np.zeros((4, 3), bool), probs)


def test_sparse_label_rows_give_the_dense_matrix():
  rng = np.random.default_rng(3)
  dense = rng.random((50, 9)) < 0.3
  dense[7] = False  # an image without tags
  parts = [np.flatnonzero(r) for r in dense]
  indptr = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
  sparse = split_labels.SparseRows(indptr, np.concatenate(parts).astype(np.int32), 9)
  rows, cols = np.array([7, 3, 3, 49, 0]), np.array([8, 0, 4])
  np.testing.assert_array_equal(sparse.dense(rows, cols), dense[np.ix_(rows, cols)])
  view = split_labels.RowView(sparse, np.arange(50), np.arange(9))
  np.testing.assert_array_equal(np.concatenate([view[0:17], view[17:50]]), dense)
  r, c = rng.integers(0, 50, 40), rng.integers(0, 9, 40)
  np.testing.assert_array_equal(sparse.contains(r, c), dense[r, c])


# ---- Data, model and CLIs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory):
  out = tmp_path_factory.mktemp("curation") / "noisy"
  synthetic.generate(out, num_train=48, num_val=12, image_size=IMAGE_SIZE, drop_tag_fraction=0.3, shard_size=20,
                     workers=1, progress=False)
  return str(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, noisy_data):
  """A bundle (random weights) over the synthetic vocabulary, so its outputs map onto the data."""
  tags = synthetic.tag_vocab()
  spec = bundle_lib.ModelSpec(name="nano", num_tags=len(tags), act="silu", attn="eca")
  return bundle_lib.write_bundle(tmp_path_factory.mktemp("curation_model") / "bundle", params=random_params(spec.create(), 3),
                                 spec=spec, image_size=IMAGE_SIZE, tags=tags,
                                 thresholds=bundle_lib.threshold_config(0.5))


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_folds_partition_the_split_and_resume(noisy_data, tmp_path):
  out = tmp_path / "folds"
  assert cli.main(["folds", noisy_data, "--folds", "3", "--out", str(out), "--shard-size", "7", "--no-progress"]) == 0
  all_ids = set(split_labels.read_split_labels(noisy_data, "train").ids.tolist())
  held = []
  for k in range(3):
    fold = split_labels.read_split_labels(str(out / f"fold-{k}"), "validation")
    train = split_labels.read_split_labels(str(out / f"fold-{k}"), "train")
    assert set(fold.ids.tolist()).isdisjoint(train.ids.tolist())
    assert set(fold.ids.tolist()) | set(train.ids.tolist()) == all_ids
    held += fold.ids.tolist()
  assert sorted(held) == sorted(all_ids)  # every image held out exactly once
  stamp = os.path.getmtime(out / "fold-0" / "dataset.json")
  assert cli.main(["folds", noisy_data, "--folds", "3", "--out", str(out), "--no-progress"]) == 0
  assert os.path.getmtime(out / "fold-0" / "dataset.json") == stamp  # finished folds are kept


def test_find_missing_tags_held_out_and_cross_validated_agree(noisy_data, model_dir, tmp_path, capsys):
  direct = tmp_path / "direct"
  code = cli.main(["find-missing-tags", "--data", noisy_data, "--split", "train", "--model", model_dir,
                   "--out", str(direct), "--sheet", "4", "--batch-size", "8", "--no-progress"])
  out = capsys.readouterr().out
  assert code == 0, out
  assert "Deliberately dropped tags:" in out
  summary = json.loads((direct / "summary.json").read_text())
  assert summary["images_checked"] == 48 and summary["tags_checked"] == len(synthetic.tag_vocab())
  recovery = summary["dropped_tag_recovery"]
  assert recovery["dropped_tags"] > 0 and 0 <= recovery["precision"] <= 1 and 0 <= recovery["recall"] <= 1
  issues = _read_csv(direct / "issues.csv")
  assert len(issues) == summary["flags"] and [int(r["rank"]) for r in issues] == list(range(1, len(issues) + 1))
  assert {r["issue"] for r in issues} <= {"missing", "wrong"}
  qualities = [float(r["label_quality"]) for r in issues]
  assert qualities == sorted(qualities)
  labels = split_labels.read_split_labels(noisy_data, "train")
  row_of = {int(i): r for r, i in enumerate(labels.ids)}
  for r in issues:  # a 'missing' tag is absent from the record, a 'wrong' one present
    present = labels.labels.dense([row_of[int(r["id"])]])[0, labels.tags.names.index(r["tag"])]
    assert present == (r["issue"] == "wrong")
  grouped = json.loads((direct / "issues.json").read_text())
  assert sum(len(i["missing"]) + len(i["wrong"]) for i in grouped["images"]) == len(issues)
  assert Image.open(direct / "suspects.png").size[0] > 0
  assert len(_read_csv(direct / "tags.csv")) == summary["tags_checked"]

  # Cross-validation path: per-fold predictions merged by record id give the same report.
  folds = tmp_path / "folds"
  assert cli.main(["folds", noisy_data, "--folds", "2", "--out", str(folds), "--no-progress"]) == 0
  pred_dirs = []
  for k in range(2):
    assert cli.main(["find-missing-tags", "--data", str(folds / f"fold-{k}"), "--model", model_dir, "--predict-only",
                     "--out", str(tmp_path / f"p{k}"), "--no-progress"]) == 0
    pred_dirs.append(str(tmp_path / f"p{k}" / "predictions"))
  merged = tmp_path / "merged"
  assert cli.main(["find-missing-tags", "--data", noisy_data, "--predictions", *pred_dirs, "--out", str(merged),
                   "--sheet", "0", "--no-progress"]) == 0
  capsys.readouterr()
  assert _read_csv(merged / "issues.csv") == issues
  assert not (merged / "suspects.png").exists()

  # The same prediction set twice covers images twice: refused, naming a record.
  assert cli.main(["find-missing-tags", "--data", noisy_data, "--predictions", pred_dirs[0], pred_dirs[0],
                   "--out", str(tmp_path / "dup"), "--no-progress"]) == 2
  assert "more than one prediction set" in capsys.readouterr().err


def test_refuses_in_sample_predictions_and_unknown_categories(noisy_data, model_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"data": {"dir": noisy_data}}))
  loaded = bundle_lib.read_bundle(model_dir)
  bundle_lib.write_bundle(workdir / "bundle", params=loaded.params, spec=loaded.spec, image_size=loaded.image_size,
                          tags=loaded.tags, source={"workdir": str(workdir), "step": 1, "weights": "params"})
  args = ["find-missing-tags", "--data", noisy_data, "--split", "train", "--model", str(workdir),
          "--out", str(tmp_path / "r"), "--no-progress"]
  assert cli.main(args) == 2
  assert "in-sample" in capsys.readouterr().err
  assert cli.main(args + ["--allow-in-sample", "--categories", "general,nonsense"]) == 2
  assert "nonsense" in capsys.readouterr().err


@pytest.fixture(scope="module")
def folder_index(tmp_path_factory, model_dir):
  root = tmp_path_factory.mktemp("search")
  images = root / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(40):
    Image.fromarray(rng.integers(0, 256, (30 + i % 7, 36, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
  (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  return images, root / "index"


def test_index_and_search_a_folder(folder_index, model_dir, capsys):
  images, index_dir = folder_index
  assert cli.main(["index", str(images), "--model", model_dir, "--out", str(index_dir), "--batch-size", "8",
                   "--no-progress"]) == 0
  captured = capsys.readouterr()
  assert "Indexed 40 images" in captured.out and "recall@10 vs exact search" in captured.out
  assert "broken.jpg" in captured.err
  meta = json.loads((index_dir / "index.json").read_text())
  assert meta["count"] == 40 and meta["check"]["queries"] == 40 and 0 <= meta["check"]["recall_at_10"] <= 1

  # An indexed image finds itself first, by HNSW and by exact search.
  for extra in ([], ["--exact"]):
    assert cli.main(["search", str(index_dir), "--image", str(images / "17.png"), "--k", "3", "--json", *extra]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and hits[0]["path"].endswith("17.png") and hits[0]["score"] > 0.999

  # Tag search ranks by the tagger's own probabilities.
  import sw_zoo

  tagger = sw_zoo.load_pretrained(model_dir, batch_size=8)
  files = sorted(str(p) for p in images.glob("*.png"))
  scores = tagger.scores(files)
  names = tagger.tags.names
  a, b = names.index("circle"), names.index("striped_background")
  joint = np.log(scores[:, a]) + np.log1p(-scores[:, b])
  assert cli.main(["search", str(index_dir), "--tags", "circle -striped_background", "--k", "5", "--json"]) == 0
  hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  expected = [files[i] for i in np.argsort(-joint)[:5]]
  assert [h["path"] for h in hits] == expected
  np.testing.assert_allclose([h["score"] for h in hits], np.sort(joint)[::-1][:5], atol=1e-4)

  assert cli.main(["search", str(index_dir), "--tags", "circle no_such_tag"]) == 2
  assert "no_such_tag" in capsys.readouterr().err


def test_index_a_dataset_and_failed_builds_keep_the_old_index(noisy_data, model_dir, folder_index, tmp_path, capsys):
  out = tmp_path / "ds_index"
  assert cli.main(["index", noisy_data, "--split", "validation", "--model", model_dir, "--out", str(out),
                   "--no-progress"]) == 0
  index = embedding_index.SearchIndex(str(out))
  assert len(index) == 12 and {"id", "source", "split"} <= set(index.items[0])
  before = (out / "index.json").read_text()
  empty = tmp_path / "nothing_readable"
  empty.mkdir()
  (empty / "x.png").write_bytes(b"not a png")
  assert cli.main(["index", str(empty), "--model", model_dir, "--out", str(out), "--no-progress"]) == 2
  assert "nothing to index" in capsys.readouterr().err
  assert (out / "index.json").read_text() == before
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
  assert cli.main(["index", noisy_data, "--split", "nope", "--model", model_dir, "--out", str(out)]) == 2
  assert "'nope'" in capsys.readouterr().err
