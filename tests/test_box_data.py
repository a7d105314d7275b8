"""One box per image, on the data side: the record key, letterbox maths, augmentation that moves
the box with the pixels, pipeline batches, `prepare` from manifests and box files, and the
synthetic generator's `box` option."""

import io
import json
import os

import grain
import msgpack
import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic
from data_prep.synthetic_scene import largest_object_box, render_scene
from data_prep.synthetic_tags import COLORS
from sw_zoo import cli
from sw_zoo.data import augment, dataset_info, pipeline, preprocess, records

RED = (255, 0, 0)


# ---- records ---------------------------------------------------------------------------------

def test_box_round_trips_and_box_less_records_are_unchanged():
  base = {"id": 5, "image": b"jpegbytes", "labels": [1, 3], "source": "a.jpg"}
  raw = records.encode_record({**base, "box": np.array([0.1, 0.2, 0.7, 1.0])})
  record = records.decode_record(raw)
  assert record["box"].dtype == np.float32 and record["box"].shape == (4,)
  np.testing.assert_allclose(record["box"], [0.1, 0.2, 0.7, 1.0], rtol=1e-7)
  assert records.encode_record(record) == raw  # decode -> encode is exact (data_prep.prune does it)

  plain = records.encode_record(base)
  assert "box" not in msgpack.unpackb(plain)  # absent, not null
  assert records.encode_record({**base, "box": None}) == plain
  assert records.decode_record(plain)["box"] is None
  assert records.encode_record(records.decode_record(plain)) == plain


@pytest.mark.parametrize("box", [[0.1, 0.2, 0.7], [0.5, 0.2, 0.4, 0.9], [0.1, 0.2, 0.7, 1.5],
                                 [-0.1, 0, 0.5, 0.5], [0.1, 0.1, float("nan"), 0.5], "0 0 1 1",
                                 [0.1, 0.1, 0.1, 0.5], [True, 0, 1, 1]])
def test_bad_boxes_are_refused_on_encode_and_decode_naming_record_and_key(box):
  with pytest.raises(ValueError, match=r"record 5: key 'box'"):
    records.encode_record({"id": 5, "image": b"x", "labels": [], "box": box})
  raw = msgpack.packb({"schema_version": 1, "id": 5, "image": b"x", "labels": [], "box": box})
  with pytest.raises(ValueError, match=r"record 5: key 'box'"):
    records.decode_record(raw)
  null = msgpack.packb({"schema_version": 1, "id": 5, "image": b"x", "labels": [], "box": None})
  with pytest.raises(ValueError, match=r"record 5: key 'box'"):
    records.decode_record(null)


# ---- letterbox maths and augmentation: the box stays on the object's pixels ------------------

def _scene(height=120, width=160, rect=(40, 30, 100, 80), seed=0):
  """Grey noise with a solid red rectangle (x0, y0, x1, y1 in pixels) and its normalised box."""
  grey = np.random.default_rng(seed).integers(0, 256, (height, width, 1), dtype=np.uint8)
  image = np.repeat(grey, 3, axis=-1)
  x0, y0, x1, y1 = rect
  image[y0:y1, x0:x1] = RED
  return image, np.array([x0 / width, y0 / height, x1 / width, y1 / height])


def _red_pixels(image):
  rgb = image.astype(np.int32)
  return rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) / 2 > 127  # at least half-covered by red


def _red_box(image):
  """The red pixels' bounding box, normalised to the (square) image; None without red."""
  mask = _red_pixels(image)
  if not mask.any():
    return None
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / image.shape[0]


def _iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_letterbox_box_maths_match_preprocess_eval_and_invert():
  for height, width, rect in ((120, 160, (40, 30, 100, 80)), (150, 90, (5, 60, 85, 140)),
                              (64, 64, (10, 10, 30, 50))):
    image, box = _scene(height, width, rect)
    moved = preprocess.box_after_letterbox(box, height, width)
    assert moved.dtype == np.float32
    out = preprocess.preprocess_eval(image, 96)
    assert _iou(moved, _red_box(out)) > 0.95
    np.testing.assert_allclose(preprocess.box_to_source(moved, height, width), box, atol=1e-6)
  # Batched, and predictions reaching into the white padding are clipped to the image.
  boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.2, 0.3, 0.6, 0.9]])
  source = preprocess.box_to_source(boxes, 50, 100)  # 50 px of padding above, 50 below
  np.testing.assert_allclose(source[0], [0, 0, 1, 1])
  np.testing.assert_allclose(source[1], [0.2, 0.1, 0.6, 1.0], atol=1e-6)


# (spec, source image shape, output size). Every op that moves pixels, alone and combined; the
# rectangle stays clear of the frame edges wherever a shift follows (edge replication would
# smear it beyond its box, rightly not part of the box).
ALIGNMENT_SPECS = {
    "letterbox_resize": ({"ops": "letterbox,resize", "resize_methods": "bilinear,bicubic"}, 96),
    "stretching_resize": ({"ops": "resize"}, 96),
    "rrc": ({"ops": "letterbox,rrc", "rrc_scale": (0.3, 1.0)}, 96),
    "shift": ({"ops": "shift", "shift_fraction": 0.2}, 96),
    "flip": ({"ops": "flip"}, 96),
    "rotate": ({"ops": "rotate", "rotate_deg": 30.0}, 96),
    "combined": ({"ops": "rotate,letterbox,rrc,shift,flip", "rrc_scale": (0.8, 1.0),
                  "rotate_deg": 15.0, "shift_fraction": 0.1}, 80),
    "default": (None, 64),
}


@pytest.mark.parametrize("name", sorted(ALIGNMENT_SPECS))
def test_augmented_box_tightly_encloses_the_object_pixels(name):
  spec, size = ALIGNMENT_SPECS[name]
  image, box = _scene()
  fn = augment.make_augmenter(spec, size)
  for seed in range(40):
    rng_plain, rng_box = np.random.default_rng(seed), np.random.default_rng(seed)
    plain = fn(image, rng_plain)
    out, moved = fn(image, rng_box, box=box)
    np.testing.assert_array_equal(out, plain)  # same pixels ...
    assert rng_plain.random() == rng_box.random()  # ... from the same random draws
    red = _red_box(out)
    assert moved is not None and red is not None, seed
    assert moved.dtype == np.float32 and np.all((0 <= moved) & (moved <= 1))
    # Every edge within a pixel of where the red stops (edge pixels are blends: a half-covered
    # one counts as red or not), so it encloses the rectangle and is tight.
    assert np.abs(moved - red).max() * size < 1.0, (seed, moved * size, red * size)
    assert _iou(moved, red) > 0.9, (seed, moved * size, red * size)


def test_boxes_cut_by_a_crop_are_clipped_and_dropped_when_mostly_gone():
  # Square crops of a quarter of the letterboxed square: the rectangle is often cut.
  image, box = _scene(rect=(20, 10, 80, 60))
  size, scale = 64, 0.25
  fn = augment.make_augmenter({"ops": "letterbox,rrc", "rrc_scale": (scale, scale),
                               "rrc_ratio": (1.0, 1.0)}, size)
  # The rectangle's area in the output if it were all visible (crop side = sqrt(scale) * 160).
  full = 60 * 50 * (size / (np.sqrt(scale) * 160)) ** 2
  kinds = {"whole": 0, "cut": 0, "dropped": 0}
  for seed in range(150):
    out, moved = fn(image, np.random.default_rng(seed), box=box)
    visible = _red_pixels(out).sum()
    if moved is None:
      kinds["dropped"] += 1
      assert visible < augment.MIN_BOX_VISIBLE_FRACTION * full + 2 * size  # (+ partial edges)
      continue
    assert visible > augment.MIN_BOX_VISIBLE_FRACTION * full - 2 * size
    kinds["cut" if visible < 0.95 * full else "whole"] += 1
    assert _iou(moved, _red_box(out)) > 0.9, seed
  assert min(kinds.values()) > 0, kinds


def test_cutout_keeps_the_box_and_no_box_gives_none():
  image, box = _scene()
  fn = augment.make_augmenter({"ops": "letterbox,resize,cutout", "cutout_prob": 1.0}, 48)
  for seed in range(5):
    _, moved = fn(image, np.random.default_rng(seed), box=box)
    np.testing.assert_allclose(moved, preprocess.box_after_letterbox(box, 120, 160), atol=1e-6)
    out, none = fn(image, np.random.default_rng(seed), box=None)
    assert none is None and out.shape == (48, 48, 3)
  with pytest.raises(ValueError, match="box"):
    fn(image, np.random.default_rng(0), box=[0.5, 0.5, 0.1, 0.9])


# ---- the synthetic generator's boxes ---------------------------------------------------------

def _generated(tmp_path, **kw):
  out = tmp_path / "synthetic"
  info = synthetic.generate(out, num_train=24, num_val=5, image_size=64, shard_size=10,
                            workers=1, progress=False, **kw)
  rows = []
  for split in info["splits"]:
    source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(out, split, info))
    rows += [records.decode_record(source[i]) for i in range(len(source))]
  return out, info, rows


def test_synthetic_box_bounds_the_largest_object_and_changes_nothing_else(tmp_path):
  out, info, rows = _generated(tmp_path, box=True)
  _, plain_info, plain_rows = _generated(tmp_path / "plain")
  assert "num_boxes" not in plain_info["splits"]["train"] and "box" not in plain_info["generator"]
  assert info["generator"]["box"] is True
  assert dataset_info.num_boxes(info, "train") == sum(r["box"] is not None for r in rows[:24])
  assert dataset_info.num_boxes(info, "validation") == sum(r["box"] is not None for r in rows[24:])
  assert dataset_info.num_boxes(plain_info, "train") == 0
  for with_box, plain in zip(rows, plain_rows):
    assert with_box["image"] == plain["image"] and plain["box"] is None
    np.testing.assert_array_equal(with_box["labels"], plain["labels"])

  for index, row in enumerate(rows[:24]):
    scene = render_scene(np.random.default_rng([0, 0, index]), 64)
    expected = largest_object_box(scene)
    if expected is None:
      assert row["box"] is None
    else:
      np.testing.assert_allclose(row["box"], expected, atol=1e-7)


# Shapes without thin tips: a star's or arrow's point is a sliver of a pixel after the 2x
# downsampling, so no pixel there has the object's colour any more (the box is right, the colour
# test cannot see it).
_BLUNT_SHAPES = ("circle", "ring", "square", "heart", "cross", "hexagon", "semicircle", "crescent")


def test_largest_object_box_tightly_bounds_the_objects_colour():
  size, checked = 128, 0
  for index in range(80):
    scene = render_scene(np.random.default_rng([7, 0, index]), size)
    if not scene.placed:
      continue
    largest = max(scene.placed, key=lambda p: np.count_nonzero(p.union))
    colour = largest.obj.color
    # Only where the colour tells the object apart: no other object of that colour, not an
    # ink colour (outlines, borders, text and sparkles are black, white or yellow), not greyed.
    if (largest.obj.kind not in _BLUNT_SHAPES or colour in ("white", "black", "grey", "yellow")
        or colour in [p.obj.color for p in scene.placed if p is not largest]
        or "monochrome" in scene.tags):
      continue
    box = np.array(largest_object_box(scene))
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG", quality=95)  # as the records store it
    pixels = np.asarray(Image.open(buffer)).astype(np.int32)
    # The object's colour in a window 4 px larger than the box on every side.
    x0, y0 = np.maximum(np.floor(box[:2] * size).astype(int) - 4, 0)
    x1, y1 = np.minimum(np.ceil(box[2:] * size).astype(int) + 4, size)
    near = np.abs(pixels[y0:y1, x0:x1] - np.array(COLORS[colour])).max(-1) < 60
    ys, xs = np.nonzero(near)
    found = (np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) + [x0, y0, x0, y0]) / size
    assert np.all(found[:2] >= box[:2] - 1.5 / size) and np.all(found[2:] <= box[2:] + 1.5 / size)
    assert _iou(box, found) > 0.8, (index, largest.obj.kind, box * size, found * size)
    checked += 1
  assert checked >= 10, checked


def test_pipelines_with_box_have_the_keys_and_shapes(tmp_path):
  out, info, rows = _generated(tmp_path, box=True)
  spec = {"ops": "letterbox,rrc,flip,rotate", "rrc_scale": (0.8, 1.0)}
  kw = dict(global_batch_size=4, image_size=48, seed=0, augment_spec=spec, num_threads=1,
            prefetch_batches=1)
  batch = next(iter(pipeline.make_train_dataset(out, with_box=True, **kw)))
  plain = next(iter(pipeline.make_train_dataset(out, **kw)))
  assert set(plain) == {"image", "labels"}
  assert set(batch) == {"image", "labels", "box", "box_mask"}
  np.testing.assert_array_equal(batch["image"], plain["image"])
  assert batch["box"].shape == (4, 4) and batch["box"].dtype == np.float32
  assert batch["box_mask"].shape == (4,) and batch["box_mask"].dtype == np.float32
  assert np.all(batch["box"][:, :2] < batch["box"][:, 2:]) and batch["box_mask"].sum() >= 3
  unaugmented = next(iter(pipeline.make_train_dataset(out, with_box=True, augment=False, **kw)))
  assert set(unaugmented) == {"image", "labels", "box", "box_mask"}

  eval_ds = pipeline.make_eval_dataset(out, global_batch_size=4, image_size=48, with_box=True,
                                       num_threads=1, prefetch_batches=1)
  batches = list(eval_ds)
  assert len(batches) == 2  # 5 validation examples: 3 padded rows in the second batch
  last = batches[1]
  assert last["box"].shape == (4, 4) and last["box_mask"].shape == (4,)
  np.testing.assert_array_equal(last["box_mask"][1:], 0.0)
  np.testing.assert_array_equal(last["box"][1:], 0.0)
  for batch in batches:  # square images: the letterbox leaves the stored box as it is
    for box, mask, example_id in zip(batch["box"], batch["box_mask"], batch["id"]):
      if example_id >= 0:
        record = next(r for r in rows if r["id"] == example_id)
        assert mask == float(record["box"] is not None)
        if record["box"] is not None:
          np.testing.assert_allclose(box, record["box"], atol=1e-6)
  assert "box" not in next(iter(pipeline.make_eval_dataset(out, global_batch_size=4,
                                                           image_size=48)))
  # A record without a box: zeros and mask 0, whatever the path.
  raw = records.encode_record({"id": 1, "image": rows[0]["image"], "labels": [0]})
  example = pipeline.decode_example(raw, num_labels=info["num_labels"], image_size=48,
                                    with_box=True)
  assert example["box_mask"] == 0.0 and not example["box"].any()


# ---- prepare: manifests and box files --------------------------------------------------------

def _write_jpeg(path, width, height, seed, orientation=None):
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  extra = {}
  if orientation is not None:  # EXIF Orientation: viewers (and sw_zoo) rotate the image
    exif = Image.Exif()
    exif[0x0112] = orientation
    extra["exif"] = exif.tobytes()
  image.save(path, format="JPEG", quality=90, **extra)


def _prepared(out):
  info = dataset_info.read_dataset_info(out)
  found = {}
  for split in info["splits"]:
    if info["splits"][split]["shards"]:
      source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(out, split, info))
      for i in range(len(source)):
        record = records.decode_record(source[i])
        found[record["source"]] = record["box"]
  with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
    return info, found, json.load(f)


def test_prepare_manifest_with_pixel_box_columns(tmp_path, capsys):
  images = tmp_path / "images"
  images.mkdir()
  _write_jpeg(images / "wide.jpg", 40, 20, 0)
  _write_jpeg(images / "rotated.jpg", 40, 20, 1, orientation=6)  # displayed 20 wide, 40 high
  _write_jpeg(images / "nobox.jpg", 20, 20, 2)
  _write_jpeg(images / "outside.jpg", 20, 20, 3)
  _write_jpeg(images / "partial.jpg", 20, 20, 4)
  manifest = tmp_path / "tags.csv"
  manifest.write_text("path,tags,left,top,right,bottom\n"
                      "images/wide.jpg,a b,10,5,30,20.5\n"      # 20.5: half a pixel past, clipped
                      "images/rotated.jpg,a,0,0,20,10\n"
                      "images/nobox.jpg,a,,,,\n"
                      "images/outside.jpg,a,0,0,25,10\n"
                      "images/partial.jpg,a,1,2,,\n", encoding="utf-8")
  out = tmp_path / "out"
  args = ["prepare", "manifest", str(manifest), "--out", str(out), "--box-columns",
          "left,top,right,bottom", "--box-units", "pixels", "--workers", "1", "--no-progress",
          "--val-permille", "0", "--max-side", "16"]
  assert cli.main(args) == 0
  info, found, report = _prepared(out)
  np.testing.assert_allclose(found["images/wide.jpg"], [0.25, 0.25, 0.75, 1.0], atol=1e-6)
  np.testing.assert_allclose(found["images/rotated.jpg"], [0.0, 0.0, 1.0, 0.25], atol=1e-6)
  assert found["images/nobox.jpg"] is None
  assert info["splits"]["train"]["num_boxes"] == 2 and report["boxes"]["train"] == 2
  skipped = {e["source"]: e["detail"] for e in report["skipped_items"]}
  assert report["skipped"] == {"bad_box": 2}
  assert "outside the 20x20 image" in skipped["images/outside.jpg"]
  assert "tags.csv:6" in skipped["images/partial.jpg"]  # the manifest row
  # Editing a box is a change of the inputs: the finished dataset is not silently reused.
  manifest.write_text(manifest.read_text().replace("10,5,30,20.5", "10,5,30,19"))
  assert cli.main(args) != 0
  assert "inputs changed since: 0 added / 1 modified" in capsys.readouterr().err


def test_prepare_folder_with_box_files_and_normalised_jsonl(tmp_path):
  root = tmp_path / "images"
  root.mkdir()
  for i, (name, box_text) in enumerate([("a", "0.1 0.2 0.5 0.6"), ("b", "[0.0, 0.5, 1.0, 1.0]"),
                                        ("c", '{"x0": 0.2, "y0": 0.2, "x1": 0.4, "y1": 0.3}'),
                                        ("d", ""), ("e", None), ("f", "0.5 0.5 0.2")]):
    _write_jpeg(root / f"{name}.png.jpg", 24, 16, i)
    (root / f"{name}.png.txt").write_text("tag_one, tag_two")
    if box_text is not None:
      (root / f"{name}.png.jpg.box").write_text(box_text)  # the <name><ext> form
  out = tmp_path / "out"
  assert cli.main(["prepare", "folder", str(root), "--out", str(out), "--box-ext", ".box",
                   "--workers", "1", "--no-progress", "--val-permille", "0"]) == 0
  info, found, report = _prepared(out)
  np.testing.assert_allclose(found["a.png.jpg"], [0.1, 0.2, 0.5, 0.6], atol=1e-6)
  np.testing.assert_allclose(found["b.png.jpg"], [0.0, 0.5, 1.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(found["c.png.jpg"], [0.2, 0.2, 0.4, 0.3], atol=1e-6)
  assert found["d.png.jpg"] is None and found["e.png.jpg"] is None
  assert info["splits"]["train"]["num_boxes"] == 3
  assert report["skipped"] == {"bad_box": 1}
  assert "f.png.jpg.box" in report["skipped_items"][0]["detail"]
  assert info["generator"]["source"]["box_ext"] == ".box"

  # JSON lines, normalised (the default units); null coordinates mean no box.
  manifest = tmp_path / "rows.jsonl"
  rows = [{"path": "images/a.png.jpg", "tags": ["x"], "bx": [0.1, 0.1, 0.9, 0.8]},
          {"path": "images/b.png.jpg", "tags": ["x"], "bx": [None] * 4},
          {"path": "images/c.png.jpg", "tags": ["x"], "bx": [0.1, 0.1, 1.2, 0.8]}]
  manifest.write_text("".join(
      json.dumps({"path": r["path"], "tags": r["tags"], **dict(zip("abcd", r["bx"]))}) + "\n"
      for r in rows))
  out = tmp_path / "out_jsonl"
  assert cli.main(["prepare", "manifest", str(manifest), "--out", str(out), "--box-columns",
                   "a,b,c,d", "--workers", "1", "--no-progress", "--val-permille", "0"]) == 0
  info, found, report = _prepared(out)
  np.testing.assert_allclose(found["images/a.png.jpg"], [0.1, 0.1, 0.9, 0.8], atol=1e-6)
  assert found["images/b.png.jpg"] is None and report["skipped"] == {"bad_box": 1}
  assert "rows.jsonl:3" in report["skipped_items"][0]["detail"]


def test_box_options_do_not_change_box_less_conversions(tmp_path):
  """Without box options a source describes itself as before, so datasets made before boxes
  existed keep their fingerprint (and a rerun stays a no-op)."""
  from data_prep.sources.folder import FolderSource
  from data_prep.sources.manifest import ManifestSource
  (tmp_path / "m.csv").write_text("path,tags\n")
  assert set(FolderSource(tmp_path).describe()) == {"root", "caption_ext"}
  described = ManifestSource(tmp_path / "m.csv").describe()
  assert set(described) == {"manifest", "image_root", "columns"} and "box" not in described["columns"]
  with pytest.raises(ValueError, match="4 columns"):
    ManifestSource(tmp_path / "m.csv", box_columns="a,b,c")
  with pytest.raises(ValueError, match="units"):
    FolderSource(tmp_path, box_ext=".box", box_units="inches")
  with pytest.raises(ValueError, match="share"):
    FolderSource(tmp_path, box_ext=".txt")
