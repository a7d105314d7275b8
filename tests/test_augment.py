"""Host-side augmentation: the declarative spec, each op, the default = old behaviour, errors."""

import ml_collections
import numpy as np
import pytest

from sw_zoo.data import augment


def _natural(height, width, seed=0):
  """A smooth, non-symmetric test image (flips and resamplings all change it)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  base = np.stack([x / width * 200, y / height * 200, (x * y) / (height * width) * 255], -1)
  return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _outputs(spec, image, size, seeds=range(12)):
  fn = augment.make_augmenter(spec, size)
  return [fn(image, np.random.default_rng(s)) for s in seeds]


def test_default_spec_is_preprocess_eval_then_the_original_flip_shift():
  for shape, size in (((40, 40), 40), ((50, 30), 32), ((64, 64), 48)):
    image = _natural(*shape)
    fn = augment.make_augmenter(None, size)
    explicit = augment.make_augmenter({"ops": "shift,flip"}, size)
    for seed in range(6):
      expected = augment.augment(augment.preprocess_eval(image, size),
                                 np.random.default_rng(seed), size)
      np.testing.assert_array_equal(fn(image, np.random.default_rng(seed)), expected)
      np.testing.assert_array_equal(explicit(image, np.random.default_rng(seed)), expected)


def test_empty_ops_and_letterbox_resize_bicubic_are_the_eval_preprocessing():
  image = _natural(30, 50)
  expected = augment.preprocess_eval(image, 24)
  for spec in ({"ops": ""}, {"ops": "letterbox,resize", "resize_methods": "bicubic"}):
    for out in _outputs(spec, image, 24, seeds=range(3)):
      np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("ops", ["letterbox,rrc", "rrc,flip", "letterbox,resize,rotate",
                                 "cutout", "letterbox,rrc,flip,rotate,cutout", "flip,rotate",
                                 "rotate,letterbox,rrc,shift,flip,cutout"])
def test_every_op_combination_gives_the_training_shape_deterministically(ops):
  image = _natural(56, 64)  # not square, but leaves rrc room within its aspect-ratio range
  spec = {"ops": ops, "resize_methods": "bilinear,bicubic,lanczos,box", "cutout_prob": 0.8}
  before = image.copy()
  outs = _outputs(spec, image, 32)
  np.testing.assert_array_equal(image, before)  # the input is never written to
  for out in outs:
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
  again = _outputs(spec, image, 32)
  for a, b in zip(outs, again):
    np.testing.assert_array_equal(a, b)
  assert len({o.tobytes() for o in outs}) > 6


def test_flip_prob_one_mirrors():
  image = _natural(20, 20)
  out = _outputs({"ops": "flip", "flip_prob": 1.0}, image, 20, seeds=[0])[0]
  np.testing.assert_array_equal(out, image[:, ::-1])
  out = _outputs({"ops": "flip", "flip_prob": 0.0}, image, 20, seeds=[0])[0]
  np.testing.assert_array_equal(out, image)


def test_letterbox_pads_white_and_rrc_full_scale_is_a_resize():
  tall = np.zeros((40, 20, 3), np.uint8)
  out = _outputs({"ops": "letterbox,rrc", "rrc_scale": (1.0, 1.0), "rrc_ratio": (1.0, 1.0),
                  "resize_methods": "bicubic"}, tall, 16, seeds=[0])[0]
  np.testing.assert_array_equal(out, augment.preprocess_eval(tall, 16))
  assert out[8, 0].tolist() == [255, 255, 255] and out[8, 8].tolist() == [0, 0, 0]
  # Rotation before the letterbox works on PIL images; the padding is still white.
  out = _outputs({"ops": "rotate,letterbox,resize", "rotate_deg": 1.0}, tall, 16, seeds=[0])[0]
  assert out[8, 0].tolist() == [255, 255, 255]


def test_rrc_boxes_respect_scale_ratio_and_bounds():
  rng = np.random.default_rng(0)
  for _ in range(300):
    width, height = rng.integers(8, 200, size=2)
    scale = sorted(rng.uniform(0.05, 1.0, size=2))
    left, top, right, bottom = augment._rrc_box(rng, width, height, scale, (3 / 4, 4 / 3))
    assert 0 <= left < right <= width + 1e-9 and 0 <= top < bottom <= height + 1e-9
    w, h = right - left, bottom - top
    if (w, h) != (width, height) and not np.isclose(w, width) and not np.isclose(h, height):
      assert scale[0] - 1e-9 <= w * h / (width * height) <= scale[1] + 1e-9  # not a fallback
      assert 3 / 4 - 1e-9 <= w / h <= 4 / 3 + 1e-9


def test_resize_method_is_drawn_per_example_among_the_named_filters():
  image = _natural(64, 64)
  methods = ("bilinear", "bicubic", "lanczos", "box")
  candidates = {m: augment.resize(image, 24, m) for m in methods}
  assert len({c.tobytes() for c in candidates.values()}) == len(methods)
  seen = set()
  for out in _outputs({"ops": "resize", "resize_methods": ",".join(methods)}, image, 24,
                      seeds=range(24)):
    match = [m for m, c in candidates.items() if np.array_equal(out, c)]
    assert match
    seen.update(match)
  assert seen == set(methods)


def test_rotate_fills_white_and_keeps_the_centre():
  black = np.zeros((32, 32, 3), np.uint8)
  outs = _outputs({"ops": "rotate", "rotate_deg": 30.0}, black, 32, seeds=range(8))
  for out in outs:
    assert out[16, 16].tolist() == [0, 0, 0]
  assert any(out[0, 0].tolist() == [255, 255, 255] for out in outs)


def test_cutout_erases_one_box_of_the_configured_area():
  black = np.zeros((40, 40, 3), np.uint8)  # already the training size: no resize copies it
  spec = {"ops": "cutout", "cutout_prob": 1.0, "cutout_area": (0.1, 0.2), "cutout_fill": "white"}
  for out in _outputs(spec, black, 40):
    erased = np.all(out == 255, axis=-1)
    rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
    assert erased.sum() == len(rows) * len(cols)  # one solid rectangle
    assert 0.06 <= erased.mean() <= 0.26  # area range, allowing for rounding of the sides
  assert not black.any()
  assert all(np.array_equal(o, black) for o in _outputs({"ops": "cutout", "cutout_prob": 0.0},
                                                        black, 40, seeds=range(3)))
  noisy = _outputs({"ops": "cutout", "cutout_prob": 1.0, "cutout_fill": "noise"}, black, 40)
  assert all(o.any() for o in noisy)


def test_configdict_specs_are_accepted():
  spec = ml_collections.ConfigDict({"ops": "letterbox,rrc,flip", "rrc_scale": (0.8, 1.0)})
  assert augment.make_augmenter(spec, 16)(_natural(20, 30), np.random.default_rng(0)).shape == (
      16, 16, 3)


@pytest.mark.parametrize("spec, match", [
    ({"ops": "flip,zoom"}, "unknown op 'zoom'"),
    ({"ops": "flip", "rotate_degrees": 3}, r"unknown key\(s\) \['rotate_degrees'\]"),
    ({"ops": "rrc,resize"}, "only one of rrc/resize"),
    ({"ops": "rrc,letterbox"}, "letterbox before"),
    ({"ops": "letterbox,flip"}, "letterbox before"),
    ({"ops": "shift,rrc"}, "shift after"),
    ({"ops": "flip,flip"}, "twice"),
    ({"flip_prob": 1.5}, "'flip_prob'"),
    ({"rrc_scale": (0.9, 0.5)}, "'rrc_scale'"),
    ({"rrc_scale": 0.9}, "'rrc_scale'"),
    ({"resize_methods": "bicubic,cubic"}, "'resize_methods'"),
    ({"cutout_fill": "red"}, "'cutout_fill'"),
    ({"ops": 3}, "'ops'"),
])
def test_bad_specs_name_the_op_or_key(spec, match):
  with pytest.raises(ValueError, match=match):
    augment.make_augmenter(spec, 32)


def test_bad_inputs_are_rejected():
  fn = augment.make_augmenter(None, 16)
  with pytest.raises(ValueError, match="uint8"):
    fn(np.zeros((16, 16), np.uint8), np.random.default_rng(0))
  with pytest.raises(ValueError, match="image_size"):
    augment.make_augmenter(None, 0)


def test_shift_is_edge_padding_then_a_crop():
  image = _natural(32, 32)
  for seed in range(20):
    rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    pad = 4
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    top, left = ref_rng.integers(0, 2 * pad + 1, size=2)
    np.testing.assert_array_equal(augment._shift(image, rng, 1 / 8),
                                  padded[top:top + 32, left:left + 32])


def test_rrc_window_of_the_lazy_letterbox_equals_cropping_the_padded_square():
  for shape in ((40, 24), (24, 40), (33, 33)):
    image = _natural(*shape)
    spec = {"ops": "letterbox,rrc", "rrc_scale": (0.3, 1.0), "resize_methods": "bilinear"}
    lazy = _outputs(spec, image, 16, seeds=range(10))
    square = augment.letterbox(image)
    eager = _outputs({**spec, "ops": "rrc"}, square, 16, seeds=range(10))
    for a, b in zip(lazy, eager):
      np.testing.assert_array_equal(a, b)


def test_rotate_is_counter_clockwise_about_the_centre_like_pil():
  image = np.zeros((33, 33, 3), np.uint8)
  image[16, 26] = 255  # a dot 10 px right of the centre pixel
  fn = augment.make_augmenter({"ops": "rotate", "rotate_deg": 90.0}, 33)
  for seed in range(4):
    angle = np.random.default_rng(seed).uniform(-90.0, 90.0)
    out = fn(image, np.random.default_rng(seed))[6:-6, 6:-6].max(-1)  # away from white corners
    y, x = np.unravel_index(np.argmax(out), out.shape)
    measured = np.degrees(np.arctan2(16 - (y + 6), (x + 6) - 16))  # y grows downwards
    assert abs(measured - angle) < 8, (seed, measured, angle)


def test_big_shrinks_are_antialiased():
  stripes = np.zeros((256, 256, 3), np.uint8)
  stripes[:, ::2] = 255  # 1-pixel stripes: aliasing would give black/white bands
  for method in ("bilinear", "bicubic", "lanczos", "box", "hamming"):
    out = augment.resize(stripes, 32, method).astype(int)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 10, method
