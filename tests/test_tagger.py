"""Tagger: the eval preprocessing exactly, batching that does not change scores, one compile per
batch shape, thresholds / MCut / top-k, embeddings, every input kind, unreadable inputs."""
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import sw_zoo
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.data import image_io
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.data.preprocess import preprocess_eval
from sw_zoo.evaluation.metrics import mcut_threshold
from sw_zoo.inference.tagger import Tagger
from sw_zoo.evaluation.evaluator import predict_probs

IMAGE_SIZE = 32
GENERAL = ("long_hair", "simple_background", "^_^", "smile", "red_eyes", "holding_cup")
CHARACTERS = ("char_alpha", "char_beta")


def sample_vocab() -> vocab_lib.TagVocab:
  ratings = [vocab_lib.Tag(n, vocab_lib.CATEGORY_RATING) for n in ("general", "sensitive", "questionable", "explicit")]
  return vocab_lib.TagVocab(ratings + [vocab_lib.Tag(n, vocab_lib.CATEGORY_GENERAL) for n in GENERAL]
                            + [vocab_lib.Tag(n, vocab_lib.CATEGORY_CHARACTER) for n in CHARACTERS])


def random_params(model, seed: int = 0, scale: float = 0.3):
  """Params of the right shapes drawn with numpy (linen's init runs the whole model op by op, ~20 s
  here): gains near 1 and non-zero residual branches, so every path carries signal and the
  scores spread over (0, 1)."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)),
                                               train=False)["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name in ("gain", "skipinit_gain"):
      return (1.0 + scale * noise).astype(np.float32)
    if name == "bias":
      return scale * noise
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else leaf.shape[0]
    return noise / np.float32(np.sqrt(fan_in))

  return jax.tree_util.tree_map_with_path(draw, abstract)


def make_bundle(path, *, name="nano", threshold=0.5, seed=0) -> str:
  tags = sample_vocab()
  spec = bundle_lib.ModelSpec(name=name, num_tags=len(tags), act="silu", attn="eca")
  return bundle_lib.write_bundle(path, params=random_params(spec.create(), seed), spec=spec, image_size=IMAGE_SIZE, tags=tags,
                                 thresholds=bundle_lib.threshold_config(threshold))


def sample_images(n: int, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (int(rng.integers(20, 70)), int(rng.integers(20, 70)), 3), dtype=np.uint8)
          for _ in range(n)]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
  return make_bundle(tmp_path_factory.mktemp("tagger") / "bundle")


@pytest.fixture(scope="module")
def tagger(bundle_dir):
  # JAX: these tests compare with the eval step to 1e-6 (the onnx backend has its own tests)
  return sw_zoo.load_pretrained(bundle_dir, batch_size=4, backend="jax")


def test_scores_equal_the_eval_step_on_preprocess_eval(tagger, bundle_dir):
  """Same preprocessing function, same model, same params as validation during training."""
  images = sample_images(7)
  bundle = bundle_lib.read_bundle(bundle_dir)
  eval_probs = jax.jit(functools.partial(predict_probs, model=bundle.spec.create()))
  expected = eval_probs(bundle.params, np.stack([preprocess_eval(i, IMAGE_SIZE) for i in images]))
  np.testing.assert_allclose(tagger.scores(images), np.asarray(expected), atol=1e-6)


def test_file_inputs_are_read_like_the_dataset_converters(tagger, tmp_path):
  # A transparent, non-square PNG: composited onto white, padded to a white square, resized.
  rgba = np.random.default_rng(1).integers(0, 256, (50, 30, 4), dtype=np.uint8)
  rgba[:10, :, 3] = 0
  path = tmp_path / "post.png"
  Image.fromarray(rgba, "RGBA").save(path)
  expected = preprocess_eval(np.asarray(image_io.load_image(path)), IMAGE_SIZE)
  np.testing.assert_array_equal(tagger.preprocess(str(path)), expected)
  assert (expected[:, :5] == 255).all()  # letterbox columns are white
  data = path.read_bytes()
  by_kind = [tagger.scores(str(path)), tagger.scores(path), tagger.scores(data),
             tagger.scores(Image.open(io.BytesIO(data))), tagger.scores(rgba)]
  for scores in by_kind[1:]:
    np.testing.assert_allclose(scores, by_kind[0], atol=1e-6)


def test_batching_padding_and_compiles(bundle_dir):
  tagger = Tagger.from_bundle(bundle_dir, batch_size=4)
  images = sample_images(7)
  together = tagger.scores(images)  # one full batch of 4, then 3 padded to 4
  assert together.shape == (7, len(sample_vocab()))
  compiled = tagger.forward._jit._cache_size
  assert compiled() == 1
  one_by_one = np.stack([tagger.scores(i) for i in images])  # batch of 1: one more shape
  np.testing.assert_allclose(together, one_by_one, atol=1e-5)
  assert compiled() == 2
  stacked = tagger.scores(np.stack([tagger.preprocess(i) for i in images]))  # a [N, H, W, 3] stack
  np.testing.assert_allclose(stacked, together, atol=1e-6)
  assert compiled() == 2
  assert [tagger.forward.padded_size(n, 4) for n in (1, 2, 3, 4, 9)] == [1, 2, 4, 4, 4]


def test_predict_categories_thresholds_and_top_k(tagger):
  images = sample_images(3)
  scores = tagger.scores(images)
  preds = tagger.predict(images)  # bundle threshold 0.5
  assert len(preds) == 3
  for p, s in zip(preds, scores):
    assert list(p.rating) == sorted(p.rating, key=p.rating.get, reverse=True)
    assert set(p.rating) == {"general", "sensitive", "questionable", "explicit"}
    assert p.rating_tag == max(p.rating, key=p.rating.get)
    general = dict(zip(GENERAL, s[4:10]))
    assert [t for t, _ in p.general] == sorted((t for t in GENERAL if general[t] >= 0.5), key=lambda t: -general[t])
    assert all(n in CHARACTERS for n, _ in p.character)
  everything = tagger.predict(images[0], thresholds=0.0)
  assert len(everything.general) == len(GENERAL) and len(everything.character) == len(CHARACTERS)
  only_general = tagger.predict(images[0], thresholds={"general": 0.0, "character": 1.01})
  assert len(only_general.general) == len(GENERAL) and only_general.character == []
  top = tagger.predict(images[0], thresholds=0.0, top_k=2)
  assert top.general == everything.general[:2] and top.character == everything.character[:2]
  with pytest.raises(ValueError, match="unknown categories.*genral"):
    tagger.predict(images[0], thresholds={"genral": 0.3})


def test_mcut():
  assert mcut_threshold(np.array([0.9, 0.8, 0.2, 0.1]))[0] == pytest.approx(0.5)
  assert mcut_threshold(np.array([0.3]))[0] == 0.5


def test_predict_mcut_uses_the_largest_gap(tagger):
  image = sample_images(1)[0]
  scores = tagger.scores(image)
  p = tagger.predict(image, mcut=True)
  general = np.sort(scores[4:10])[::-1]
  cut = mcut_threshold(general)[0]
  assert len(p.general) == int((general > cut).sum())
  assert all(score >= 0.15 for _, score in p.character)


def test_embed(tagger):
  images = sample_images(5)
  vectors = tagger.embed(images)
  assert vectors.shape == (5, tagger.embedding_dim) and vectors.dtype == np.float32
  np.testing.assert_allclose(tagger.embed(images[2]), vectors[2], atol=1e-5)


def test_unreadable_inputs_raise_or_are_reported(tagger, tmp_path):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  good = sample_images(2)
  with pytest.raises(image_io.ImageError, match="broken.jpg"):
    tagger.predict([good[0], str(bad)])
  results = list(tagger.iter_predict([good[0], str(bad), good[1]], skip_errors=True))
  assert [r.error is None for r in results] == [True, False, True]
  assert results[1].source == str(bad) and results[1].prediction is None
  with pytest.raises(ValueError, match="uint8"):
    tagger.predict(np.zeros((8, 8, 3), np.float32))
  with pytest.raises(TypeError, match="cannot read an image"):
    tagger.predict([42])


# ---- Backends and test-time augmentation -------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_tagger(bundle_dir):
  return sw_zoo.load_pretrained(bundle_dir, batch_size=4, backend="onnx")


def test_onnx_backend_gives_the_jax_scores_and_embeddings(tagger, onnx_tagger):
  """The bundle has no model.onnx: the graph is built from its params in memory."""
  images = sample_images(6, seed=4)  # 4 + 2: a full and a partial batch
  assert onnx_tagger.backend == "onnx" and tagger.backend == "jax"
  np.testing.assert_allclose(onnx_tagger.scores(images), tagger.scores(images), atol=1e-4)
  np.testing.assert_allclose(onnx_tagger.embed(images), tagger.embed(images), atol=1e-3)
  assert onnx_tagger.embedding_dim == tagger.embedding_dim
  jax_preds, onnx_preds = tagger.predict(images, thresholds=0.5), onnx_tagger.predict(images, thresholds=0.5)
  # Same decisions (no score within 1e-4 of the threshold with these seeds).
  for a, b in zip(onnx_preds, jax_preds):
    assert [t for t, _ in a.general] == [t for t, _ in b.general] and a.rating_tag == b.rating_tag
    np.testing.assert_allclose([s for _, s in a.general], [s for _, s in b.general], atol=1e-4)


def test_auto_backend_is_onnx_on_the_cpu_when_installed(bundle_dir):
  from sw_zoo.inference import backends

  assert jax.default_backend() == "cpu"
  assert backends.choose("auto", bundle_dir) == "onnx"
  with pytest.raises(ValueError, match="backend 'tensorrt'"):
    backends.choose("tensorrt")


@pytest.mark.parametrize("backend", ["jax", "onnx"])
def test_tta_flip_is_the_mean_of_the_image_and_its_mirror(tagger, onnx_tagger, backend):
  t = tagger if backend == "jax" else onnx_tagger
  # Preprocessed first: mirroring a raw image with an odd letterbox would shift it by a pixel.
  images = [t.preprocess(i) for i in sample_images(3, seed=5)]
  mirrored = [np.ascontiguousarray(i[:, ::-1]) for i in images]
  plain, flipped = t.scores(images), t.scores(mirrored)
  assert np.abs(plain - flipped).max() > 1e-3  # the mirror really scores differently
  np.testing.assert_allclose(t.scores(images, tta="flip"), (plain + flipped) / 2, atol=1e-5)
  p = t.predict(images[0], thresholds=0.0, tta="flip")
  averaged = dict(p.general)
  assert averaged[GENERAL[0]] == pytest.approx((plain[0, 4] + flipped[0, 4]) / 2, abs=1e-5)
  with pytest.raises(ValueError, match="tta='rotate'"):
    t.predict(images[0], tta="rotate")


def test_scores_of_batch_and_prediction_json(tagger):
  images = sample_images(5, seed=6)
  batch = np.stack([tagger.preprocess(i) for i in images])
  np.testing.assert_allclose(tagger.scores_of_batch(batch), tagger.scores(images), atol=1e-6)
  with pytest.raises(ValueError, match="expected uint8 images"):
    tagger.scores_of_batch(batch.astype(np.float32))
  p = tagger.predict(images[0], thresholds=0.0)
  j = p.to_json()
  assert list(j["rating"]) == list(p.rating) and list(j["general"]) == [t for t, _ in p.general]
  assert list(j["general"].values()) == sorted(j["general"].values(), reverse=True)
  assert set(j) == {"rating", "general", "character", "other"}


def test_per_tag_thresholds_from_the_bundle_and_their_overrides(bundle_dir, tmp_path):
  """A bundle whose training tuned per-tag thresholds (`eval.per_tag_min_count`): they apply by
  default; thresholds the caller gives for a category replace them there, a number everywhere."""
  import json
  import shutil

  tuned = tmp_path / "tuned"
  shutil.copytree(bundle_dir, tuned)
  config = json.loads((tuned / "config.json").read_text())
  config["thresholds"] = {"method": "best_f1", "default": 0.5, "by_category": {"general": 0.5, "character": 0.5},
                          "by_tag": {"smile": 1.0, "long_hair": 0.0, "char_alpha": 0.0}, "per_tag_min_count": 5}
  (tuned / "config.json").write_text(json.dumps(config))
  t = Tagger.from_bundle(tuned, batch_size=4)
  image = sample_images(1, seed=8)[0]
  scores = dict(zip(t.tags.names, t.scores(image)))
  general = {n for n, _ in t.predict(image).general}
  assert "smile" not in general and "long_hair" in general and dict(t.predict(image).character).keys() >= {"char_alpha"}
  assert general - {"long_hair"} == {n for n in GENERAL if n not in ("smile", "long_hair") and scores[n] >= 0.5}
  assert {n for n, _ in t.predict(image, thresholds={"general": 0.5}).general} == {
      n for n in GENERAL if scores[n] >= 0.5}  # the general override replaces the general per-tag ones ...
  assert "char_alpha" in dict(t.predict(image, thresholds={"general": 0.5}).character)  # ... not the others
  assert {n for n, _ in t.predict(image, thresholds=0.5).general} == {n for n in GENERAL if scores[n] >= 0.5}
  limits = t.tag_thresholds()
  assert limits[t.tags.names.index("smile")] == 1.0 and limits[t.tags.names.index("red_eyes")] == 0.5
