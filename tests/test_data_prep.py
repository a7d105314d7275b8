"""data_prep end to end: every source kind -> shards whose records decode to the right labels;
report counts; idempotence; resume after an interruption; the CLI and `inspect`."""

import io
import json
import os
import sqlite3

import grain
import numpy as np
import pytest
from PIL import Image

from sw_zoo import cli
from data_prep import convert
from data_prep.sources.danbooru import DanbooruSource
from data_prep.sources.folder import FolderSource
from data_prep.sources.manifest import ManifestSource
from data_prep.sources.sqlite_db import SqliteSchema, SqliteSource
from sw_zoo.data import dataset_info, records, vocab as vocab_lib
from test_data_prep_units import awkward_images  # tests/ is on sys.path (no __init__.py).

SMALL = dict(shard_size=4, val_permille=250, max_side=32)


def _jpeg(seed, width=40, height=30):
  rng = np.random.default_rng(seed)
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
      buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _read(data_dir):
  """{source key: (label names, decoded image)} over all splits, plus the vocabulary."""
  info = dataset_info.read_dataset_info(data_dir)
  vocab = vocab_lib.read_selected_tags(os.path.join(data_dir, "selected_tags.csv"))
  out = {}
  for split in info["splits"]:
    if not info["splits"][split]["shards"]:
      continue
    source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, split, info))
    assert len(source) == info["splits"][split]["num_examples"]
    for i in range(len(source)):
      r = records.decode_record(source[i])
      out[r["source"]] = ({vocab.names[j] for j in r["labels"]},
                          records.decode_image(r["image"]), split, r["id"])
  return out, vocab


def _shard_bytes(data_dir):
  info = dataset_info.read_dataset_info(data_dir)
  files = [n for s in info["splits"].values() for n in s["shards"]] + ["selected_tags.csv"]
  return {n: open(os.path.join(data_dir, n), "rb").read() for n in files}


def _skipped_keys(report):
  return {(e["reason"], e["source"]) for e in report["skipped_items"]}


# ------------------------------------------------------------------------------------------ folder

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """12 good images with captions plus one of each kind of bad input."""
  root = tmp_path_factory.mktemp("folder")
  (root / "a").mkdir()
  (root / "b" / "deep").mkdir(parents=True)
  expected = {}
  for i in range(12):
    rel = f"{'a' if i % 2 else 'b/deep'}/img{i:02d}.jpg"
    (root / rel).write_bytes(_jpeg(i, width=40 + 30 * (i % 3)))
    names = ["1girl", "long hair"] + (["hat"] if i % 2 else ["solo"]) + (["rare"] if i == 0 else [])
    caption = ", ".join(names) + (", rating:e" if i % 4 == 0 else ", rating:g")
    (root / (os.path.splitext(rel)[0] + ".txt")).write_text(caption)
    expected[rel] = {n.replace(" ", "_") for n in names} | {"explicit" if i % 4 == 0 else "general"}
  for name, data in awkward_images().items():  # Good, if unusual, images.
    ext = ".gif" if name == "animated" else ".jpg" if name in ("cmyk", "exif_rotated") else ".png"
    (root / "a" / f"odd_{name}{ext}").write_bytes(data)
    (root / "a" / f"odd_{name}{ext}.txt").write_text("1girl solo")  # gallery-dl style name.
    expected[f"a/odd_{name}{ext}"] = {"1girl", "solo"}
  good = _jpeg(99, 80, 60)
  (root / "a" / "truncated.jpg").write_bytes(good[:len(good) // 2])
  (root / "a" / "truncated.txt").write_text("1girl")
  (root / "a" / "empty.png").write_bytes(b"")
  (root / "a" / "empty.txt").write_text("1girl")
  (root / "a" / "latin1.jpg").write_bytes(_jpeg(50))
  (root / "a" / "latin1.txt").write_bytes(b"caf\xe9, 1girl")
  (root / "a" / "uncaptioned.jpg").write_bytes(_jpeg(51))
  (root / "a" / "notags.jpg").write_bytes(_jpeg(52))
  (root / "a" / "notags.txt").write_text("  \n")
  # Tag files no image claims: an unsupported extension (both naming styles), a vanished image.
  (root / "a" / "typo.jpe").write_bytes(_jpeg(53))
  (root / "a" / "typo.txt").write_text("1girl")
  (root / "a" / "clip.heic").write_bytes(b"not decoded")
  (root / "a" / "clip.heic.txt").write_text("1girl")
  (root / "b" / "gone.txt").write_text("1girl")
  bad = {("truncated_image", "a/truncated.jpg"), ("empty_file", "a/empty.png"),
         ("bad_caption_encoding", "a/latin1.jpg"), ("no_caption", "a/uncaptioned.jpg"),
         ("no_tags", "a/notags.jpg")}
  return root, expected, bad


@pytest.fixture(scope="module")
def folder_out(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("folder_out")
  report = convert.prepare(FolderSource(folder[0]), out, convert.PrepareOptions(**SMALL),
                           workers=1, progress=False)
  return out, report


def test_folder_records_labels_and_report(folder, folder_out):
  _, expected, bad = folder
  out, report = folder_out
  got, vocab = _read(out)
  assert {k: v[0] for k, v in got.items()} == expected
  assert _skipped_keys(report) == bad
  assert report["skipped"] == {reason: 1 for reason, _ in bad}
  assert sum(report["written"].values()) == len(expected)
  assert report["written"]["validation"] > 0 and report["excluded"] == {}
  # WD order: ratings, then general by training count; counts are training-split counts.
  assert vocab.names[:4] == ["general", "sensitive", "questionable", "explicit"]
  assert vocab.names[4] == "1girl" and set(vocab.categories[4:].tolist()) == {0}
  train = [v[0] for v in got.values() if v[2] == "train"]
  for i, name in enumerate(vocab.names):
    assert vocab.counts[i] == sum(name in labels for labels in train), name
  for key, (_, image, _, _) in got.items():
    assert max(image.shape[:2]) <= 32, key
  assert got["a/odd_exif_rotated.jpg"][1].shape[:2] == (32, 16)  # Applied, then resized.
  ids = [v[3] for v in got.values()]
  assert len(set(ids)) == len(ids)
  with open(os.path.join(out, "report.json")) as f:
    assert json.load(f)["skipped"] == report["skipped"]
  assert not os.path.exists(os.path.join(out, convert.PROGRESS_DIR))
  orphans = {os.path.relpath(e["path"], folder[0]): e["hint"] for e in report["orphan_captions"]["examples"]}
  assert report["orphan_captions"]["count"] == 3 and orphans == {
      "a/clip.heic.txt": "clip.heic is beside it, but .heic is not an image type sw_zoo reads",
      "a/typo.txt": "typo.jpe is beside it, but .jpe is not an image type sw_zoo reads",
      "b/gone.txt": "no file of that name is beside it (a renamed or deleted image?)"}


def test_same_inputs_give_identical_bytes_and_rerun_is_a_noop(folder, folder_out, tmp_path):
  out, _ = folder_out
  again = tmp_path / "again"
  # Two worker processes, smaller progress bar... and still the same bytes.
  convert.prepare(FolderSource(folder[0]), again, convert.PrepareOptions(**SMALL), workers=2,
                  progress=False)
  assert _shard_bytes(again) == _shard_bytes(out)
  stamp = os.path.getmtime(again / "dataset.json")
  convert.prepare(FolderSource(folder[0]), again, convert.PrepareOptions(**SMALL), workers=1,
                  progress=False)
  assert os.path.getmtime(again / "dataset.json") == stamp
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert.prepare(FolderSource(folder[0]), again,
                    convert.PrepareOptions(**{**SMALL, "quality": 80}), workers=1, progress=False)


def interrupt_after_shards(monkeypatch, n):
  """Makes the next prepare raise KeyboardInterrupt (as Ctrl-C would) after its n-th shard."""
  calls = []

  def interrupt(split, index):
    calls.append((split, index))
    if len(calls) == n:
      raise KeyboardInterrupt

  monkeypatch.setattr(convert, "_after_shard_hook", interrupt)


def test_resume_after_interruption(folder, folder_out, tmp_path, monkeypatch):
  out, _ = folder_out
  resumed = tmp_path / "resumed"
  interrupt_after_shards(monkeypatch, 2)
  with pytest.raises(KeyboardInterrupt):
    convert.prepare(FolderSource(folder[0]), resumed, convert.PrepareOptions(**SMALL), workers=1,
                    progress=False)
  assert not (resumed / "dataset.json").exists()
  assert not list(resumed.glob("*.tmp"))
  assert len(list((resumed / convert.PROGRESS_DIR).glob("*-*.json"))) == 2
  monkeypatch.setattr(convert, "_after_shard_hook", None)
  report = convert.prepare(FolderSource(folder[0]), resumed, convert.PrepareOptions(**SMALL),
                           workers=1, progress=False)
  assert report["resumed_shards"] == 2
  assert _shard_bytes(resumed) == _shard_bytes(out)
  assert report["skipped"] == convert.prepare(FolderSource(folder[0]), out,
                                              convert.PrepareOptions(**SMALL),
                                              progress=False)["skipped"]


def test_vocab_options_on_a_folder(folder, tmp_path):
  root = folder[0]
  (tmp_path / "black.txt").write_text("hat\n")
  (tmp_path / "aliases.csv").write_text("long_hair,very_long_hair\n")
  (tmp_path / "cats.csv").write_text("name,category,tag_id\n1girl,0,470575\nsolo,4,212816\n"
                                     "very_long_hair,0,1\n")
  options = convert.PrepareOptions(
      **SMALL, blacklist=str(tmp_path / "black.txt"), aliases=str(tmp_path / "aliases.csv"),
      tag_categories=str(tmp_path / "cats.csv"), min_count={0: 2}, top_k={0: 2},
      keep_ratings=("general",))
  report = convert.prepare(FolderSource(root), tmp_path / "out", options, workers=1,
                           progress=False)
  got, vocab = _read(tmp_path / "out")
  # 'solo' is a character per the table; general keeps the top 2 with count >= 2; 'rare' is
  # unknown to the table (and only on an explicit post).
  assert vocab.names == ["general", "sensitive", "questionable", "explicit", "1girl",
                         "very_long_hair", "solo"]
  assert vocab[4].tag_id == 470575 and list(vocab.categories) == [9, 9, 9, 9, 0, 0, 4]
  assert report["tags"]["blacklisted"] > 0 and report["tags"]["aliased"] > 0
  # rating:e posts, the 8 unrated odd_* images and the 3 unrated broken ones (filters come first).
  assert report["excluded"]["rating_filtered"] == 3 + 8 + 3
  assert all("explicit" not in labels for labels, *_ in got.values())


# ----------------------------------------------------------------------- manifest / danbooru / sql

def test_manifest_csv_and_jsonl(tmp_path):
  (tmp_path / "img").mkdir()
  for i in range(6):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(_jpeg(i))
  (tmp_path / "m.csv").write_bytes(
      b"file,tag_string,rating,post\n"
      b'img/0.jpg,"1girl, solo",g,1000\nimg/1.jpg,1girl hat,q,1999\nimg/2.jpg,1girl,e,2001\n'
      b"img/missing.jpg,1girl,g,3000\nimg/3.jpg,1girl,g,notanumber\nimg/4.jpg,caf\xe9,g,5\n")
  source = ManifestSource(tmp_path / "m.csv", path_column="file", tags_column="tag_string",
                          id_column="post")
  report = convert.prepare(source, tmp_path / "csv", convert.PrepareOptions(
      **{**SMALL, "val_permille": 2}), workers=1, progress=False)
  got, _ = _read(tmp_path / "csv")
  assert got["img/0.jpg"][0] == {"1girl", "solo", "general"} and got["img/0.jpg"][3] == 1000
  assert got["img/1.jpg"][2] == "validation" and got["img/2.jpg"][2] == "train"  # id % 1000.
  assert _skipped_keys(report) == {("missing_file", "img/missing.jpg"),
                                   ("bad_id", "img/3.jpg"),
                                   ("bad_caption_encoding", "img/4.jpg")}

  lines = [json.dumps({"path": "img/0.jpg", "tags": ["1girl", "Long Hair"], "rating": "s"}),
           json.dumps({"path": "img/5.jpg", "tags": "1girl solo"}), "{not json"]
  (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
  report = convert.prepare(ManifestSource(tmp_path / "m.jsonl"), tmp_path / "jsonl",
                           convert.PrepareOptions(**{**SMALL, "val_permille": 0}), workers=1,
                           progress=False)
  got, _ = _read(tmp_path / "jsonl")
  assert got["img/0.jpg"][0] == {"1girl", "long_hair", "sensitive"}
  assert got["img/5.jpg"][0] == {"1girl", "solo"}
  assert report["skipped"] == {"bad_metadata": 1}


def _danbooru_posts(root):
  """Danbooru2021-style metadata and 512px/<bucket>/<id>.jpg images."""
  posts = []
  for i, post_id in enumerate([1001, 2002, 3003, 4970, 5985, 6950, 7004, 8005]):
    posts.append({"id": post_id, "md5": f"{post_id:032x}", "file_ext": "png",
                  "rating": "gsqe"[i % 4], "tag_string_general": "1girl solo" + " hat" * (i % 2),
                  "tag_string_character": "hatsune_miku" if i < 5 else "",
                  "tag_string_copyright": "vocaloid", "tag_string_artist": "someone",
                  "tag_string_meta": "highres"})
    if post_id != 8005:  # 8005's image is missing.
      path = root / "512px" / f"{post_id % 1000:04d}" / f"{post_id}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(_jpeg(i))
  posts.append({"id": 9006, "file_ext": "mp4", "rating": "g", "tag_string_general": "1girl"})
  return posts


def test_danbooru_layout(tmp_path):
  posts = _danbooru_posts(tmp_path)
  meta = tmp_path / "metadata"
  meta.mkdir()
  (meta / "posts000000000000.json").write_text(
      "\n".join(json.dumps(p) for p in posts[:5]) + "\n")
  (meta / "posts000000000001.json").write_text(
      "\n".join(json.dumps(p) for p in posts[5:]) + '\n{"id": "x"}\n')
  options = convert.PrepareOptions(**{**SMALL, "val_permille": 30, "holdout_permille": 40})
  report = convert.prepare(DanbooruSource(meta, image_root=tmp_path), tmp_path / "out", options,
                           workers=1, progress=False)
  got, vocab = _read(tmp_path / "out")
  assert vocab.names == ["general", "sensitive", "questionable", "explicit", "1girl", "solo",
                         "hat", "hatsune_miku"]  # Default categories: no copyright/artist/meta.
  assert got["512px/0001/1001.jpg"][0] == {"1girl", "solo", "hatsune_miku", "general"}
  assert {k: v[2] for k, v in got.items() if v[2] != "train"} == {
      "512px/0970/4970.jpg": "validation", "512px/0985/5985.jpg": "validation"}  # id % 1000 >= 970
  assert report["excluded"] == {"held_out": 1, "not_image": 1}  # 6950 (bucket 950), the mp4.
  assert _skipped_keys(report) == {("missing_file", "512px/0005/8005.jpg"),
                                   ("bad_id", "posts000000000001.json:5")}

  options = convert.PrepareOptions(**{**SMALL, "categories": ()})
  convert.prepare(DanbooruSource(meta, image_root=tmp_path), tmp_path / "all", options,
                  workers=1, progress=False)
  tags = vocab_lib.read_selected_tags(tmp_path / "all" / "selected_tags.csv")
  # WD order, then copyright, artist, meta.
  assert tags.categories.tolist() == [9, 9, 9, 9, 0, 0, 0, 4, 3, 1, 5]


def _make_db(path, posts, *, image_table="images", id_col="image_id"):
  db = sqlite3.connect(path)
  db.execute(f"CREATE TABLE {image_table} ({id_col} INT PRIMARY KEY, rating TEXT, md5 TEXT, "
             "file_ext TEXT, is_deleted INT)")
  db.execute("CREATE TABLE tags (tag_id INT PRIMARY KEY, name TEXT, category INT, count INT)")
  db.execute("CREATE TABLE imageTags (image_id INT, tag_id INT, PRIMARY KEY(image_id, tag_id))")
  tag_ids = {}
  for p in posts:
    db.execute(f"INSERT INTO {image_table} VALUES (?,?,?,?,?)",
               (p["id"], p["rating"], p.get("md5"), p["file_ext"], int(p["id"] == 3003)))
    for field, category in (("tag_string_general", 0), ("tag_string_character", 4),
                            ("tag_string_copyright", 3)):
      for name in p.get(field, "").split():
        if name not in tag_ids:
          tag_ids[name] = 100 + len(tag_ids)
          db.execute("INSERT INTO tags VALUES (?,?,?,0)", (tag_ids[name], name, category))
        db.execute("INSERT OR IGNORE INTO imageTags VALUES (?,?)", (p["id"], tag_ids[name]))
  db.execute("INSERT INTO imageTags VALUES (1001, 99999)")  # A tag id with no tags row.
  db.commit()
  db.close()
  return tag_ids


def test_sqlite_fire_eggs_schema(tmp_path):
  posts = _danbooru_posts(tmp_path)
  tag_ids = _make_db(tmp_path / "db.sqlite", posts)
  source = SqliteSource(tmp_path / "db.sqlite", image_root=tmp_path, where="i.is_deleted = 0")
  report = convert.prepare(source, tmp_path / "out", convert.PrepareOptions(
      **{**SMALL, "val_permille": 30}), workers=1, progress=False)
  got, vocab = _read(tmp_path / "out")
  assert got["512px/0001/1001.jpg"][0] == {"1girl", "solo", "hatsune_miku", "general"}
  assert "512px/0003/3003.jpg" not in got  # Filtered by --where.
  assert vocab[vocab.index("hatsune_miku")].tag_id == tag_ids["hatsune_miku"]
  assert report["tags"]["unknown"]["most_common"] == [["tag_id:99999", 1]]
  assert report["excluded"] == {"not_image": 1}
  assert _skipped_keys(report) == {("missing_file", "512px/0005/8005.jpg")}

  # Renamed tables/columns are configurable; a wrong name fails clearly.
  _make_db(tmp_path / "other.sqlite", posts, image_table="posts", id_col="id")
  schema = SqliteSchema(images_table="posts", image_id_column="id", md5_column="hash")
  source = SqliteSource(tmp_path / "other.sqlite", image_root=tmp_path, schema=schema,
                        image_template="512px/{bucket}/{id}.jpg")
  assert source.schema.md5_column == ""  # Optional and absent: read as NULL.
  convert.prepare(source, tmp_path / "other", convert.PrepareOptions(
      **{**SMALL, "val_permille": 30}), workers=1, progress=False)
  got_other, _ = _read(tmp_path / "other")
  assert set(got_other) == set(got) | {"512px/0003/3003.jpg"}  # No --where this time.
  # The same through the command line, with the schema flags.
  assert cli.main(["prepare",
      "sqlite", str(tmp_path / "other.sqlite"), "--image-root", str(tmp_path), "--out",
      str(tmp_path / "cli"), "--images-table", "posts", "--image-id-column", "id",
      "--where", "is_deleted = 0", "--val-permille", "30", "--shard-size", "4", "--max-side",
      "32", "--workers", "1", "--no-progress"]) == 0
  assert _shard_bytes(tmp_path / "cli") == _shard_bytes(tmp_path / "out")
  with pytest.raises(ValueError, match="no column 'image_id'.*--image-id-column"):
    SqliteSource(tmp_path / "other.sqlite", image_root=tmp_path,
                 schema=SqliteSchema(images_table="posts"))


# ------------------------------------------------------------------------------------------- tfds

def test_tfds_directory(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from data_prep.sources.tfds_dir import TfdsSource

  class TinyTagged(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "tags": tfds.features.Sequence(tfds.features.ClassLabel(
              names=["1girl", "Long Hair", "hat"])),
          "post_id": np.int64}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 10), "test": self._generate_examples(100, 3)}

    def _generate_examples(self, start, n):
      for i in range(start, start + n):
        # Encoded bytes: tfds encodes numpy images with TensorFlow, which is not installed.
        yield i, {"image": _jpeg(i), "tags": [0, 1 + i % 2], "post_id": i}

  builder = TinyTagged(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  source = TfdsSource(builder.data_path, id_key="post_id")
  options = convert.PrepareOptions(**{**SMALL, "val_permille": 992})  # Buckets >= 8.
  report = convert.prepare(source, tmp_path / "out", options, workers=1, progress=False)
  got, vocab = _read(tmp_path / "out")
  assert set(vocab.names) == {"1girl", "long_hair", "hat"}
  # The dataset's own splits are kept; validation is carved from train (ids 8, 9).
  assert report["written"] == {"test": 3, "train": 8, "validation": 2}
  for key, (labels, _, split, post_id) in got.items():
    assert labels == {"1girl", "hat" if post_id % 2 else "long_hair"}, key
    assert split == ("test" if post_id >= 100 else "validation" if post_id >= 8 else "train")


# ------------------------------------------------------------------------------ CLI and inspect

def test_cli_prepare_and_inspect(folder, tmp_path, capsys):
  out = tmp_path / "cli"
  assert cli.main(["prepare", "folder", str(folder[0]), "--out", str(out), "--shard-size", "8",
                   "--max-side", "24", "--format", "webp", "--workers", "1",
                   "--top-k", "general=3"]) == 0
  printed = capsys.readouterr().out
  assert "prepared" in printed and "no_caption 1" in printed
  assert "3 tag files have no image next to them" in printed and "clip.heic.txt" in printed
  info = dataset_info.read_dataset_info(out)
  assert info["generator"]["options"]["image_format"] == "webp"
  assert info["num_labels"] == 4 + 3
  sheet = tmp_path / "sheet.png"
  assert cli.main(["inspect", str(out), "--samples", "5", "--out", str(sheet), "--scan"]) == 0
  printed = capsys.readouterr().out
  assert "most frequent tags" in printed and "1girl" in printed and "labels/image" in printed
  with Image.open(sheet) as im:
    assert im.format == "PNG" and im.size[0] >= 224
  # Errors are reported, not raised.
  assert cli.main(["prepare", "folder", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
  assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["folder", "manifest", "danbooru", "sqlite", "tfds", "inspect"])
def test_cli_help(kind, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["inspect", "--help"] if kind == "inspect" else ["prepare", kind, "--help"])
  assert e.value.code == 0
  assert ("usage: sw-zoo inspect" if kind == "inspect" else "usage: sw-zoo prepare " + kind) in capsys.readouterr().out


def test_prepared_dataset_feeds_the_training_pipeline(folder_out):
  from sw_zoo.data.pipeline import make_eval_dataset
  out, report = folder_out
  ds = make_eval_dataset(out, split="train", global_batch_size=4, image_size=24, num_threads=1,
                         prefetch_batches=1)
  batch = next(iter(ds))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["labels"].shape[0] == 4
  assert int(batch["mask"].sum()) == 4 and len(ds) == -(-report["written"]["train"] // 4)


# --------------------------------------------------------- output dir, input changes, pruning

from data_prep import splits as splits_lib  # noqa: E402
from sw_zoo.data.atomic_file import OutputRefused  # noqa: E402


def _tree_bytes(root):
  """{relative path: bytes} of every file under root (to assert a refusal touched nothing)."""
  return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(root) for f in files}


def _small_folder(root, n=6):
  root.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    (root / f"img{i}.jpg").write_bytes(_jpeg(100 + i))
    (root / f"img{i}.txt").write_text(f"1girl, {'hat' if i % 2 else 'solo'}, rating:g")
  return root


def test_prepare_refuses_an_out_dir_that_is_not_its_own(tmp_path, capsys):
  root = _small_folder(tmp_path / "images")
  out = tmp_path / "mine"
  out.mkdir()
  (out / "notes.txt").write_text("my notes")
  (out / "train-00000-of-00001.array_record").write_bytes(b"user shard")
  before = _tree_bytes(out)
  with pytest.raises(OutputRefused, match="--force"):
    convert.prepare(FolderSource(root), out, convert.PrepareOptions(**SMALL), workers=1,
                    progress=False)
  assert _tree_bytes(out) == before
  assert cli.main(["prepare", "folder", str(root), "--out", str(out), "--workers", "1"]) == 2
  err = capsys.readouterr().err
  assert str(out) in err and "--force" in err and _tree_bytes(out) == before
  # The image root itself, or a directory holding it, is never an output, even with --force.
  images_before = _tree_bytes(root)
  for bad in (root, tmp_path):
    with pytest.raises(OutputRefused, match="input"):
      convert.prepare(FolderSource(root), bad, convert.PrepareOptions(**SMALL), workers=1,
                      force=True, progress=False)
  assert _tree_bytes(root) == images_before
  # --force writes next to the user's files (kept); an --out inside the image tree is fine.
  assert cli.main(["prepare", "folder", str(root), "--out", str(out), "--workers", "1",
                   "--force", "--no-progress"]) == 0
  assert (out / "notes.txt").read_text() == "my notes" and (out / "dataset.json").exists()
  inside = root / "prepared"
  assert cli.main(["prepare", "folder", str(root), "--out", str(inside), "--workers", "1",
                   "--no-progress"]) == 0
  assert len(_read(inside)[0]) == 6


def test_rerun_notices_fixed_edited_added_and_removed_inputs(tmp_path, capsys):
  root = _small_folder(tmp_path / "images")
  good = _jpeg(7)
  (root / "broken.jpg").write_bytes(good[:len(good) // 2])
  (root / "broken.txt").write_text("1girl, solo")
  out = tmp_path / "out"

  def run(**kwargs):
    return convert.prepare(FolderSource(root), out, convert.PrepareOptions(**SMALL), workers=1,
                           progress=False, **kwargs)

  report = run()
  assert ("truncated_image", "broken.jpg") in _skipped_keys(report)
  capsys.readouterr()
  run()
  assert "already complete (made" in capsys.readouterr().out
  # Fixing the broken image used to be a silent no-op.
  (root / "broken.jpg").write_bytes(good)
  with pytest.raises(FileExistsError, match="0 added / 1 modified / 0 removed; pass --overwrite"):
    run()
  report = run(overwrite=True)
  assert not report["skipped"] and "broken.jpg" in _read(out)[0]
  # Swapped captions: two items modified.
  a, b = (root / "img0.txt").read_text(), (root / "img1.txt").read_text()
  (root / "img0.txt").write_text(b)
  (root / "img1.txt").write_text(a)
  with pytest.raises(FileExistsError, match="0 added / 2 modified / 0 removed"):
    run()
  run(overwrite=True)
  assert _read(out)[0]["img0.jpg"][0] == {"1girl", "hat", "general"}
  (root / "new.jpg").write_bytes(_jpeg(8))
  (root / "new.txt").write_text("1girl")
  os.remove(root / "img2.jpg")
  with pytest.raises(FileExistsError, match="1 added / 0 modified / 1 removed"):
    run()
  run(overwrite=True)
  # Only options changed: said so, without input counts.
  with pytest.raises(FileExistsError, match=r"made .*; options changed since: --quality;"):
    convert.prepare(FolderSource(root), out, convert.PrepareOptions(**{**SMALL, "quality": 80}),
                    workers=1, progress=False)
  stored = np.load(out / "input_manifest.npy", allow_pickle=False)
  assert stored.dtype == np.uint64 and stored.shape == (6 - 1 + 2, 2)  # img2 gone; broken, new
  # --fingerprint hash looks at bytes: a touched but unchanged file is not a change.
  hashed = tmp_path / "hashed"
  convert.prepare(FolderSource(root), hashed, convert.PrepareOptions(**SMALL), workers=1,
                  progress=False, fingerprint="hash")
  os.utime(root / "img3.jpg", ns=(1, 1))
  capsys.readouterr()
  convert.prepare(FolderSource(root), hashed, convert.PrepareOptions(**SMALL), workers=1,
                  progress=False, fingerprint="hash")
  assert "already complete" in capsys.readouterr().out
  with pytest.raises(FileExistsError, match="0 added / 1 modified / 0 removed"):
    run()


def _name_in_split(prefix, split, val_permille=250):
  for i in range(1000):
    name = f"{prefix}{i}.jpg"
    if splits_lib.split_of_bucket(splits_lib._key_bucket(name), val_permille, 0) == split:
      return name
  raise AssertionError("no name found")


def test_tag_whose_only_training_images_are_unreadable_is_dropped(tmp_path):
  root = _small_folder(tmp_path / "images", n=10)
  for i in range(10):  # 'hero' is a character: it comes after every general tag in the vocab.
    (root / f"img{i}.txt").write_text(f"1girl, hero, {'hat' if i % 2 else 'solo'}, rating:g")
  bad = _name_in_split("bad", "train")
  (root / bad).write_bytes(b"not an image at all")
  (root / bad.replace(".jpg", ".txt")).write_text("1girl, ghost, rating:g")
  val = _name_in_split("val", "validation")  # 'ghost' also labels a validation image.
  (root / val).write_bytes(_jpeg(9))
  (root / val.replace(".jpg", ".txt")).write_text("1girl, ghost, hero, rating:g")
  (tmp_path / "cats.csv").write_text("1girl,0\nhat,0\nsolo,0\nghost,0\nhero,4\n")
  out = tmp_path / "out"
  report = convert.prepare(FolderSource(root), out,
                           convert.PrepareOptions(**SMALL, tag_categories=str(tmp_path / "cats.csv")),
                           workers=1, progress=False)
  got, vocab = _read(out)
  assert "ghost" not in vocab.names and vocab.names[-1] == "hero"
  assert report["tags"]["dropped_unused"] == ["ghost"] and report["num_labels"] == len(vocab)
  assert all(vocab.counts[i] > 0 for i in range(4, len(vocab)))
  assert got[val][0] == {"1girl", "hero", "general"}
  assert all("hero" in labels for labels, *_ in got.values())
  assert dataset_info.read_dataset_info(out)["num_labels"] == len(vocab)
  assert not (out / convert.PROGRESS_DIR).exists()


def test_sigkill_of_prepare_leaves_no_worker_behind(tmp_path):
  import signal
  import subprocess
  import sys
  import time
  psutil = pytest.importorskip("psutil")
  root = tmp_path / "images"
  root.mkdir()
  buffer = io.BytesIO()  # Big, cheap to write, slow to decode: keeps the workers busy.
  Image.new("RGB", (3000, 3000), (10, 20, 30)).save(buffer, format="PNG")
  for i in range(200):
    (root / f"img{i:03d}.png").write_bytes(buffer.getvalue())
    (root / f"img{i:03d}.txt").write_text("1girl")
  proc = subprocess.Popen([sys.executable, "-m", "data_prep", "folder", str(root), "--out",
                           str(tmp_path / "out"), "--workers", "2", "--no-progress"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 120
    children: list = []
    while time.time() < deadline and proc.poll() is None:
      children = parent.children(recursive=True)
      if len(children) >= 3:  # 2 workers + the resource tracker
        break
      time.sleep(0.2)
    assert len(children) >= 3, "the workers never started"
    time.sleep(1.0)  # Let them get busy.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.pid for p in alive]
  finally:
    if proc.poll() is None:
      proc.kill()
    for child in children:  # Do not leave orphans behind when the assertion fails.
      try:
        child.kill()
      except psutil.NoSuchProcess:
        pass
