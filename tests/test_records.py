"""Record schema, selected_tags.csv, dataset.json and shard writing."""

import io
import os

import grain
import msgpack
import numpy as np
import pytest
from PIL import Image

from sw_zoo.data import dataset_info, records, shard_writer, vocab


def _jpeg(rgb=(200, 30, 30), size=(20, 12)) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", size, rgb).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def test_record_round_trip():
  image = _jpeg()
  raw = records.encode_record({"id": 7, "image": image, "labels": np.array([5, 2, 5, 9]),
                               "dropped": [3], "source": "a/b.jpg"})
  record = records.decode_record(raw)
  assert record["id"] == 7
  assert record["image"] == image
  np.testing.assert_array_equal(record["labels"], [2, 5, 9])  # Sorted, unique.
  assert record["labels"].dtype == np.int32
  np.testing.assert_array_equal(record["dropped"], [3])
  assert record["source"] == "a/b.jpg"
  pixels = records.decode_image(record["image"])
  assert pixels.shape == (12, 20, 3) and pixels.dtype == np.uint8
  np.testing.assert_allclose(pixels.mean(axis=(0, 1)), (200, 30, 30), atol=4)


def test_optional_keys_default_to_empty():
  record = records.decode_record(records.encode_record({"id": 1, "image": b"x", "labels": []}))
  assert record["labels"].shape == (0,) and record["dropped"].shape == (0,)
  assert record["source"] == ""


def test_decode_image_png_with_alpha_is_composited_on_white():
  buffer = io.BytesIO()
  image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
  image.putpixel((0, 0), (0, 0, 255, 255))
  image.save(buffer, format="PNG")
  pixels = records.decode_image(buffer.getvalue())
  assert pixels.shape == (4, 4, 3)
  assert tuple(pixels[0, 0]) == (0, 0, 255)
  assert tuple(pixels[3, 3]) == (255, 255, 255)


@pytest.mark.parametrize("raw, key", [
    (msgpack.packb({"schema_version": 1, "id": 1, "image": b"x"}), "labels"),
    (msgpack.packb({"schema_version": 1, "id": 1, "image": b"x", "labels": [3, 1]}), "labels"),
    (msgpack.packb({"schema_version": 1, "id": "1", "image": b"x", "labels": []}), "id"),
    (msgpack.packb({"schema_version": 2, "id": 1, "image": b"x", "labels": []}),
     "schema_version"),
    (msgpack.packb({"schema_version": 1, "id": 1, "image": b"x", "labels": [],
                    "dropped": [1.5]}), "dropped"),
    (msgpack.packb({"schema_version": 1, "id": 1, "image": b"x", "labels": [], "extra": 1}),
     "extra"),
])
def test_decode_names_bad_key(raw, key):
  with pytest.raises(ValueError, match=key):
    records.decode_record(raw)


def test_decode_rejects_garbage():
  with pytest.raises(ValueError, match="msgpack"):
    records.decode_record(b"\xc1not msgpack")
  with pytest.raises(ValueError, match="could not decode image"):
    records.decode_image(b"definitely not an image")


def test_encode_rejects_labels_also_dropped():
  with pytest.raises(ValueError, match="both"):
    records.encode_record({"id": 1, "image": b"x", "labels": [1, 2], "dropped": [2]})


def test_selected_tags_round_trip_and_wd_header(tmp_path):
  tags = vocab.TagVocab([vocab.Tag("general", 9, 10, 0), vocab.Tag("1girl", 0, 5, 470575),
                         vocab.Tag("odd,name \"quoted\"", 0, 1, 2),
                         vocab.Tag("hatsune_miku", 4, 3, 3)])
  path = tmp_path / "selected_tags.csv"
  vocab.write_selected_tags(path, tags)
  assert path.read_text().splitlines()[0] == "tag_id,name,category,count"
  loaded = vocab.read_selected_tags(path)
  assert loaded == tags
  assert loaded.names[2] == "odd,name \"quoted\""
  assert loaded.index("hatsune_miku") == 3
  np.testing.assert_array_equal(loaded.categories, [9, 0, 0, 4])
  np.testing.assert_array_equal(loaded.category_indices(vocab.CATEGORY_GENERAL), [1, 2])
  assert not list(tmp_path.glob("*.tmp"))


def test_selected_tags_errors_name_file_and_line(tmp_path):
  path = tmp_path / "selected_tags.csv"
  path.write_text("tag_id,name,category,count\n0,general,9,1\n1,smile,zero,2\n")
  with pytest.raises(ValueError, match=rf"{path}:3: column 'category'"):
    vocab.read_selected_tags(path)
  path.write_text("id,name\n0,general\n")
  with pytest.raises(ValueError, match=rf"{path}:1: .*lacks columns"):
    vocab.read_selected_tags(path)
  path.write_text("tag_id,name,category,count\n0,smile,0,1\n1,smile,0,2\n")
  with pytest.raises(ValueError, match=rf"{path}:3: duplicate tag name 'smile'"):
    vocab.read_selected_tags(path)


def _write_small_dataset(data_dir, num_records=10, shard_size=4):
  with shard_writer.ShardWriter(data_dir, "train", shard_size=shard_size) as writer:
    for i in range(num_records):
      writer.write(records.encode_record({"id": i, "image": b"img%d" % i, "labels": [i % 3]}))
  vocab.write_selected_tags(os.path.join(data_dir, "selected_tags.csv"),
                            [vocab.Tag(f"t{i}", 0) for i in range(3)])
  return dataset_info.write_dataset_info(data_dir, {
      "schema_version": records.SCHEMA_VERSION, "source": "test", "image_size": None,
      "num_labels": 3, "splits": {"train": {"num_examples": num_records,
                                            "shards": writer.filenames}}})


def test_shard_writer_names_and_order(tmp_path):
  info = _write_small_dataset(tmp_path)
  shards = info["splits"]["train"]["shards"]
  assert shards == [f"train-0000{i}-of-00003.array_record" for i in range(3)]
  assert not list(tmp_path.glob("*.tmp"))
  source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(tmp_path, "train"))
  assert [records.decode_record(source[i])["id"] for i in range(len(source))] == list(range(10))


def test_shard_writer_leaves_nothing_on_error(tmp_path):
  with pytest.raises(RuntimeError):
    with shard_writer.ShardWriter(tmp_path, "train", shard_size=2) as writer:
      for i in range(5):
        writer.write(b"record")
      raise RuntimeError("interrupted")
  assert not os.listdir(tmp_path)


def test_dataset_info_round_trip_and_missing_shard(tmp_path):
  written = _write_small_dataset(tmp_path)
  info = dataset_info.read_dataset_info(tmp_path)
  assert info == written and "created" in info
  os.remove(tmp_path / "train-00001-of-00003.array_record")
  with pytest.raises(ValueError, match=r"splits\.train\.shards.*train-00001-of-00003"):
    dataset_info.read_dataset_info(tmp_path)


def test_dataset_info_validation_names_key(tmp_path):
  _write_small_dataset(tmp_path)
  good = dataset_info.read_dataset_info(tmp_path)
  with pytest.raises(KeyError, match="validation"):
    dataset_info.split_paths(tmp_path, "validation")
  with pytest.raises(ValueError, match="'schema_version'"):
    dataset_info.write_dataset_info(tmp_path, {**good, "schema_version": 99})
  dataset_info.write_dataset_info(tmp_path, {**good, "num_labels": 5})
  with pytest.raises(ValueError, match="'num_labels' is 5 but .*selected_tags.csv has 3"):
    dataset_info.read_dataset_info(tmp_path)
  with pytest.raises(FileNotFoundError, match="dataset.json"):
    dataset_info.read_dataset_info(tmp_path / "nowhere")
  train = good["splits"]["train"]
  for counts in ([4, 4], [4, 4, 3], [4, -1, 7], "10"):  # wrong length, wrong sum, negative, not a list
    with pytest.raises(ValueError, match=r"'splits\.train\.shard_examples' must list one non-negative count"):
      dataset_info.write_dataset_info(tmp_path, {**good, "splits": {"train": {**train, "shard_examples": counts}}})


def test_fast_decode_is_close_and_opt_in():
  y, x = np.mgrid[0:64, 0:64]
  pixels = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)  # smooth, like photos
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "JPEG", quality=90)
  exact, fast = records.decode_image(buf.getvalue()), records.decode_image(buf.getvalue(), fast=True)
  assert exact.shape == fast.shape == (64, 64, 3)
  assert np.abs(exact.astype(int) - fast.astype(int)).mean() < 2
  assert not np.array_equal(exact, fast)  # the default really is the other (exact) decode
