"""`sw-zoo prepare e621`: a small e621 db_export (the real posts / tags CSV columns, plain and
gzip) with md5-named images, prepared end to end through the CLI; categories (species kept as its
own), ratings, skipped posts in report.json, the no-op rerun, one-line errors for bad files."""

import csv
import gzip
import hashlib
import io
import json
import os

import grain
import numpy as np
import pytest
from PIL import Image

from data_prep.sources import e621
from sw_zoo import cli
from sw_zoo.data import dataset_info, records, vocab as vocab_lib

# The posts export's header as e621.net/db_export writes it.
POSTS_HEADER = ("id,uploader_id,created_at,md5,source,rating,image_width,image_height,tag_string,"
                "locked_tags,fav_count,file_ext,parent_id,change_seq,approver_id,file_size,"
                "comment_count,description,duration,updated_at,is_deleted,is_pending,is_flagged,"
                "score,up_score,down_score,is_rating_locked,is_status_locked,is_note_locked"
                ).split(",")
TAGS = [  # (id, name, e621 category, post_count)
    (11, "solo", 0, 5), (12, "anthro", 0, 6), (13, "smile", 0, 3), (21, "someartist", 1, 2),
    (31, "zootopia", 3, 2), (41, "nick_wilde", 4, 2), (51, "fox", 5, 4), (52, "canine", 5, 5),
    (61, "invalid_tag", 6, 1), (71, "absurd_res", 7, 3), (81, "lore_tag", 8, 1)]
SPECIES = e621.CATEGORY_SPECIES
# (id, ext, layout, rating, is_deleted, tags): layout "nested" (e621's ab/cd/md5.ext), "flat"
# (md5.ext) or None (no file on disk). Buckets (id % 1000) >= 750 are validation below.
POSTS = [
    (1001, "png", "nested", "s", "f", "solo anthro fox canine absurd_res someartist"),
    (2002, "jpg", "nested", "q", "f", "solo anthro nick_wilde fox canine zootopia"),
    (3003, "jpg", "flat", "e", "f", "anthro smile canine lore_tag invalid_tag"),
    (4004, "webm", None, "s", "f", "anthro canine"),
    (5005, "png", "nested", "s", "t", "anthro canine"),  # Deleted, though its file is there.
    (6006, "png", None, "q", "f", "anthro canine"),
    (7777, "png", "nested", "s", "f", "smile anthro canine"),
    (8008, "jpg", "nested", "e", "f", "anthro canine smile brand_new_tag"),
]
ARGS = ["--workers", "1", "--no-progress", "--shard-size", "4", "--max-side", "32",
        "--val-permille", "250"]


def _image(seed, ext):
  rng = np.random.default_rng(seed)
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
      buffer, format="PNG" if ext == "png" else "JPEG")
  return buffer.getvalue()


def _post_row(post_id, md5, ext, rating, deleted, tags):
  values = dict.fromkeys(POSTS_HEADER, "")
  values.update(id=post_id, uploader_id=7, created_at="2021-03-04 05:06:07.89", md5=md5,
                source="https://example.com/a\nhttps://example.com/b", rating=rating,
                image_width=32, image_height=24, tag_string=tags, fav_count=3, file_ext=ext,
                change_seq=post_id * 3, file_size=1234, comment_count=0, score=5, up_score=6,
                down_score=-1, is_deleted=deleted, is_pending="f", is_flagged="f",
                is_rating_locked="f", is_status_locked="f", is_note_locked="f",
                description='A "quoted", multi-line\ndescription, with commas.',
                updated_at="2023-01-02 03:04:05.6")
  return [values[c] for c in POSTS_HEADER]


def _write_csv(path, header, rows, compress=False):
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  data = text.getvalue().encode()
  path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
  return path


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  """{"csv": (posts, tags), "gz": (posts.gz, tags.gz), "images": root, "keys": {id: key}}."""
  root = tmp_path_factory.mktemp("e621")
  images = root / "images"
  images.mkdir()
  rows, keys = [], {}
  for post_id, ext, layout, rating, deleted, tags in POSTS:
    data = _image(post_id, ext)
    md5 = hashlib.md5(data if layout else str(post_id).encode()).hexdigest()
    nested, flat = f"{md5[:2]}/{md5[2:4]}/{md5}.{ext}", f"{md5}.{ext}"
    keys[post_id] = flat if layout == "flat" else nested
    if layout:
      (images / keys[post_id]).parent.mkdir(parents=True, exist_ok=True)
      (images / keys[post_id]).write_bytes(data)
    rows.append(_post_row(post_id, md5, ext, rating, deleted, tags))
  out = {"images": images, "keys": keys}
  for compress, kind in ((False, "csv"), (True, "gz")):
    suffix = ".csv.gz" if compress else ".csv"
    out[kind] = (_write_csv(root / f"posts-2024-01-01{suffix}", POSTS_HEADER, rows, compress),
                 _write_csv(root / f"tags-2024-01-01{suffix}", ["id", "name", "category",
                                                               "post_count"], TAGS, compress))
  return out


def _prepare(export, out, kind="gz", extra=()):
  posts, tags = export[kind]
  return cli.main(["prepare", "e621", str(posts), "--tags", str(tags), "--image-root",
                   str(export["images"]), "--out", str(out), *ARGS, *extra])


def _read(data_dir):
  """{source key: (label names, split, id)} over all splits, plus the vocabulary."""
  info = dataset_info.read_dataset_info(data_dir)
  vocab = vocab_lib.read_selected_tags(os.path.join(data_dir, "selected_tags.csv"))
  out = {}
  for split, meta in info["splits"].items():
    if meta["shards"]:
      source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, split, info))
      for i in range(len(source)):
        r = records.decode_record(source[i])
        out[r["source"]] = ({vocab.names[j] for j in r["labels"]}, split, r["id"])
  return out, vocab


def _shard_bytes(data_dir):
  info = dataset_info.read_dataset_info(data_dir)
  files = [n for s in info["splits"].values() for n in s["shards"]] + ["selected_tags.csv"]
  return {n: (data_dir / n).read_bytes() for n in files}


def test_category_mapping_is_explicit():
  # Only species and meta move; nothing lands on rating (9) or on another site's meaning.
  assert e621.E621_CATEGORIES == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: SPECIES, 6: 6, 7: 5, 8: 8}
  assert vocab_lib.CATEGORY_NAMES[SPECIES] == "species" and e621.sw_category(9) == 109
  assert e621.translate_category_spec("general,Species,lore") == "general,10,8"
  assert e621.translate_category_spec("5,species=3,general=2") == "5,10=3,general=2"
  assert e621.translate_category_spec(None) is None


def test_gzip_export_end_to_end_and_rerun(export, tmp_path, capsys):
  out = tmp_path / "out"
  assert _prepare(export, out) == 0
  got, vocab = _read(out)
  keys = export["keys"]
  # Default categories for e621: general, character, species and the 4 ratings (WD order, then
  # species); artist / copyright / meta / lore / invalid are left out.
  assert [(t.name, t.category) for t in vocab] == [
      ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
      ("anthro", 0), ("smile", 0), ("solo", 0), ("nick_wilde", 4),
      ("canine", SPECIES), ("fox", SPECIES)]
  assert vocab[vocab.index("fox")].tag_id == 51  # e621's tag id, as WD files carry Danbooru's.
  assert got == {
      keys[1001]: ({"solo", "anthro", "fox", "canine", "sensitive"}, "train", 1001),
      keys[2002]: ({"solo", "anthro", "nick_wilde", "fox", "canine", "questionable"}, "train",
                   2002),
      keys[3003]: ({"anthro", "smile", "canine", "explicit"}, "train", 3003),  # md5.ext layout
      keys[7777]: ({"smile", "anthro", "canine", "sensitive"}, "validation", 7777),
      keys[8008]: ({"anthro", "canine", "smile", "explicit"}, "train", 8008)}
  assert keys[3003].count("/") == 0 and keys[1001].count("/") == 2

  report = json.loads((out / "report.json").read_text())
  skipped = {(e["reason"], e["source"]): e["detail"] for e in report["skipped_items"]}
  assert set(skipped) == {("missing_file", keys[6006])}
  md5 = os.path.basename(keys[6006])
  assert f"no image at {keys[6006]} or {md5}" in skipped[("missing_file", keys[6006])]
  assert report["skipped"] == {"missing_file": 1}
  # The webm and the deleted post: counted, not listed (a real export has millions deleted).
  assert report["excluded"] == {"not_image": 1, "deleted": 1}
  assert report["tags"]["unknown"]["most_common"] == [["brand_new_tag", 1]]
  assert report["vocab"] == {"rating": 4, "general": 3, "character": 1, "species": 2}

  capsys.readouterr()
  assert _prepare(export, out) == 0
  assert "already complete" in capsys.readouterr().out

  # The uncompressed export gives the same bytes.
  assert _prepare(export, tmp_path / "plain", kind="csv") == 0
  assert _shard_bytes(tmp_path / "plain") == _shard_bytes(out)


def test_vocabulary_options(export, tmp_path):
  out = tmp_path / "all"
  assert _prepare(export, out, extra=["--categories", "all", "--rating-s-as", "general"]) == 0
  got, vocab = _read(out)
  category = {t.name: t.category for t in vocab}
  assert category == {"general": 9, "sensitive": 9, "questionable": 9, "explicit": 9,
                      "anthro": 0, "smile": 0, "solo": 0, "nick_wilde": 4, "zootopia": 3,
                      "someartist": 1, "absurd_res": 5, "invalid_tag": 6, "lore_tag": 8,
                      "canine": SPECIES, "fox": SPECIES}
  assert vocab.categories.tolist()[-5:] == [5, 6, 8, SPECIES, SPECIES]  # meta, others ascending
  assert "general" in got[export["keys"][1001]][0]  # s read as general on request.

  out = tmp_path / "picked"
  assert _prepare(export, out, extra=["--categories", "species,general", "--min-count",
                                      "species=3,general=1", "--top-k", "general=1",
                                      "--keep-ratings", "questionable,explicit"]) == 0
  got, vocab = _read(out)
  assert vocab.names == ["anthro", "canine"]  # fox is on 1 kept training post, under 3.
  assert set(got) == {export["keys"][i] for i in (2002, 3003, 8008)}


def test_bad_files_give_one_line_errors(export, tmp_path, capsys):
  posts, tags = export["csv"]
  lines = posts.read_text().split("\n")
  no_tags_column = tmp_path / "posts.csv"
  no_tags_column.write_text(lines[0].replace("tag_string", "tags") + "\n")
  images = str(export["images"])

  def error(*argv):
    capsys.readouterr()
    assert cli.main(["prepare", "e621", *argv, "--out", str(tmp_path / "out"), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sw-zoo prepare: error: ")
    return err

  err = error(str(no_tags_column), "--tags", str(tags), "--image-root", images)
  assert f"{no_tags_column}: no column 'tag_string'" in err
  bad_tags = _write_csv(tmp_path / "tags.csv.gz", ["id", "name", "category", "post_count"],
                        [(1, "solo", 0, 1), (2, "fox", "species", 1)], compress=True)
  err = error(str(posts), "--tags", str(bad_tags), "--image-root", images)
  assert f"{bad_tags}:3: column 'category' must be a non-negative integer, got 'species'" in err
  no_name = _write_csv(tmp_path / "tags2.csv", ["id", "tag", "category"], [(1, "solo", 0)])
  assert f"{no_name}: no column 'name'" in error(str(posts), "--tags", str(no_name),
                                                   "--image-root", images)
  assert "does not exist" in error(str(tmp_path / "nope.csv"), "--tags", str(tags),
                                   "--image-root", images)
  assert not (tmp_path / "out").exists()  # Nothing written before the error.


def test_help(capsys):
  with pytest.raises(SystemExit):
    cli.main(["prepare", "e621", "--help"])
  text = capsys.readouterr().out
  assert "usage: sw-zoo prepare e621" in text and "--tags" in text and "species 10" in text
