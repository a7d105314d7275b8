"""data_prep building blocks: image loading (sw_zoo.data.image_io), tags and vocabulary choice."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from data_prep import tags as tags_lib
from sw_zoo.data import image_io


def _encode(image, fmt, **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _jpeg(width=48, height=32, seed=0):
  rng = np.random.default_rng(seed)
  return _encode(Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)),
                 "JPEG", quality=90)


# Every awkward kind of input the converters must survive, as (name, bytes).
def awkward_images():
  rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
  rgba.paste((0, 0, 0, 0), (0, 0, 10, 10))  # Left half fully transparent.
  grey16 = Image.fromarray(np.full((8, 8), 32768, np.uint16))  # Mode I;16.
  frames = [Image.new("RGB", (12, 12), c) for c in ((0, 0, 255), (0, 255, 0))]
  gif = io.BytesIO()
  frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
  rotated = Image.new("RGB", (40, 20), (0, 128, 0))
  exif = rotated.getexif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  palette = Image.new("P", (10, 10), 1)
  palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
  return {
      "cmyk": _encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95),
      "rgba": _encode(rgba, "PNG"),
      "grey16": _encode(grey16, "PNG"),
      "animated": gif.getvalue(),
      "exif_rotated": _encode(rotated, "JPEG", exif=exif.tobytes()),
      "palette_transparent": _encode(palette, "PNG", transparency=1),
      "greyscale": _encode(Image.new("L", (9, 7), 77), "PNG"),
      "bilevel": _encode(Image.new("1", (9, 7), 1), "PNG"),
  }


def test_load_image_handles_awkward_modes():
  images = {name: np.asarray(image_io.load_image(data))
            for name, data in awkward_images().items()}
  for name, array in images.items():
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, name
  assert np.all(np.abs(images["cmyk"][4, 8].astype(int) - [255, 0, 0]) < 40)
  assert np.all(images["rgba"][5, 2] == 255) and tuple(images["rgba"][5, 15]) == (255, 0, 0)
  assert np.all(np.abs(images["grey16"].astype(int) - 128) <= 1)  # Scaled, not clipped to 255.
  assert tuple(images["animated"][6, 6]) == (0, 0, 255)  # First frame.
  assert images["exif_rotated"].shape == (40, 20, 3)  # Upright: portrait.
  assert np.all(images["palette_transparent"] == 255)  # Transparent index -> white.
  assert np.all(images["greyscale"] == 77) and np.all(images["bilevel"] == 255)


def test_load_image_rejects_bad_input_with_a_reason(tmp_path):
  good = _jpeg(200, 100)
  cases = {b"": image_io.EMPTY_FILE, good[:len(good) // 2]: image_io.TRUNCATED_IMAGE,
           b"not an image at all": image_io.UNREADABLE_IMAGE}
  for data, reason in cases.items():
    with pytest.raises(image_io.ImageError) as e:
      image_io.load_image(data)
    assert e.value.reason == reason
  with pytest.raises(image_io.ImageError) as e:
    image_io.load_image(tmp_path / "nope.png")
  assert e.value.reason == image_io.MISSING_FILE and "nope.png" in str(e.value)


def test_resize_and_encode():
  big = _jpeg(1000, 500)
  assert image_io.load_image(big, max_side=512).size == (512, 256)
  assert image_io.load_image(big, max_side=None).size == (1000, 500)
  assert image_io.load_image(_jpeg(300, 200), max_side=512).size == (300, 200)  # No upscaling.
  webp = image_io.prepare_image(big, max_side=64, image_format="webp", quality=80)
  with Image.open(io.BytesIO(webp)) as im:
    assert im.format == "WEBP" and im.size == (64, 32)
  small = _jpeg(64, 32)
  assert image_io.prepare_image(small, passthrough_jpeg=True) == small
  assert image_io.prepare_image(small) != small  # Re-encoded by default.
  assert image_io.prepare_image(big, max_side=64, passthrough_jpeg=True) != big


def test_tag_normalisation_and_captions():
  assert tags_lib.normalize_tag("  Long Hair ") == "long_hair"
  assert tags_lib.normalize_tag("hatsune miku \\(cosplay\\)") == "hatsune_miku_(cosplay)"
  assert tags_lib.parse_tag_string("1girl, long hair,\nsolo ,") == ["1girl", "long_hair", "solo"]
  assert tags_lib.parse_tag_string("1girl long_hair  solo\n") == ["1girl", "long_hair", "solo"]
  assert tags_lib.parse_rating("g") == "general"
  assert tags_lib.parse_rating("s") == "sensitive"
  assert tags_lib.parse_rating("safe", rating_s_as="general") == "general"
  assert tags_lib.parse_rating("rating:e") == "explicit" and tags_lib.parse_rating("x") is None
  assert tags_lib.parse_per_category("general=50,character=10", "x") == {0: 50, 4: 10}
  assert tags_lib.parse_per_category("7", "x") == {None: 7}
  assert tags_lib.parse_categories("general,4,rating") == (0, 4, 9)
  with pytest.raises(ValueError, match="unknown tag category"):
    tags_lib.parse_categories("generl")


def test_aliases_blacklist_and_tag_tables(tmp_path):
  (tmp_path / "aliases.csv").write_text("antecedent_name,consequent_name\na,b\nb,c\nold tag,new\n")
  assert tags_lib.load_aliases(tmp_path / "aliases.csv") == {"a": "c", "b": "c", "old_tag": "new"}
  (tmp_path / "black.txt").write_text("# comment\nbad, worse\nugly  # trailing\n")
  assert tags_lib.load_blacklist(tmp_path / "black.txt") == {"bad", "worse", "ugly"}
  (tmp_path / "plain.csv").write_text("1girl,0,100,\"\"\nhatsune_miku,4,50,\n")
  (tmp_path / "header.csv").write_text("tag_id,name,category,count\n7,hatsune_miku,4,5\n")
  (tmp_path / "tags.jsonl").write_text('{"id": 7, "name": "hatsune_miku", "category": 4}\n')
  assert tags_lib.load_tag_table(tmp_path / "plain.csv")["hatsune_miku"].category == 4
  for name in ("header.csv", "tags.jsonl"):
    assert tags_lib.load_tag_table(tmp_path / name)["hatsune_miku"] == tags_lib.TagInfo(4, 7)

  mapper = tags_lib.TagMapper(aliases={"old": "hat"}, blacklist={"bad"},
                              tag_table=tags_lib.load_tag_table(tmp_path / "plain.csv"))
  stats = tags_lib.TagStats()
  raw = [tags_lib.RawTag(n) for n in ("1girl", "old", "bad", "Hatsune Miku", "typo",
                                      "rating:q")]
  mapped, rating = mapper.map(raw, stats)
  # 'hat' (the alias target) is not in the table either, so it is unknown too.
  assert mapped == [("1girl", 0, None), ("hatsune_miku", 4, None)] and rating == "questionable"
  assert stats.aliased == 1 and stats.blacklisted == 1 and stats.unknown == {"typo": 1, "hat": 1}


def test_select_vocab_order_and_thresholds():
  counts = {"1girl": 9, "solo": 9, "hat": 2, "rare": 1, "miku": 5, "rin": 1, "touhou": 4}
  categories = {"1girl": 0, "solo": 0, "hat": 0, "rare": 0, "miku": 4, "rin": 4, "touhou": 3}
  vocab = tags_lib.select_vocab(counts, categories, {"miku": 42},
                                rating_counts={"general": 3, "explicit": 1},
                                min_count={None: 2, 4: 1}, top_k={})
  assert vocab.names == ["general", "sensitive", "questionable", "explicit", "1girl", "solo",
                         "hat", "miku", "rin", "touhou"]
  assert vocab[7].tag_id == 42 and vocab[0].tag_id == 9999999 and vocab[3].count == 1
  vocab = tags_lib.select_vocab(counts, categories, {}, rating_counts=None, min_count={},
                                top_k={0: 1, 4: 1})
  assert vocab.names == ["1girl", "miku", "touhou"]  # Ties by name; no ratings when absent.


def test_shard_writer_can_write_one_numbered_shard_of_a_known_total(tmp_path):
  from sw_zoo.data.shard_writer import ShardWriter
  with ShardWriter(tmp_path, "train", shard_size=10, first_index=3, num_shards=5) as writer:
    writer.write(b"a")
    writer.write(b"b")
    assert os.listdir(tmp_path) == ["train-00003.array_record.tmp"]
  assert writer.filenames == ["train-00003-of-00005.array_record"]
  with pytest.raises(ValueError, match="would write more than num_shards"):
    with ShardWriter(tmp_path, "x", shard_size=1, first_index=4, num_shards=5) as writer:
      writer.write(b"a")
      writer.write(b"b")
  assert not [n for n in os.listdir(tmp_path) if n.startswith("x")]
  with pytest.raises(ValueError, match="first_index"):
    ShardWriter(tmp_path, "y", shard_size=1, first_index=5, num_shards=5)
