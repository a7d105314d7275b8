"""ONNX export: onnxruntime gives JAX's scores (1e-4) for every NFNet building block, head and
pooling, and for a trained run exported with `sw-zoo export --onnx`, in the layout WD-tagger tools
load (NHWC float32 BGR 0-255 input, dynamic batch, sigmoid output, selected_tags.csv beside it)."""
import csv
import dataclasses
import json
import os
import types

import jax
import numpy as np
import onnxruntime as ort
import pytest

from sw_zoo.inference import bundle as bundle_lib
from sw_zoo import cli
from sw_zoo.evaluation.box_metrics import flip_box
from sw_zoo.inference import backends, onnx_export
from sw_zoo.models import NFNet, VARIANTS, create_model, model_config
from sw_zoo.inference.tagger import Tagger
from tests.test_bundle import source_run  # noqa: F401  (fixture)
from tests.test_tagger import random_params, sample_images
from tests.test_train import tiny_data  # noqa: F401  (fixture)

TOLERANCE = 1e-4


def _session(model_bytes: bytes) -> ort.InferenceSession:
  return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _bgr(images_rgb_uint8: np.ndarray) -> np.ndarray:
  """What WD tools feed: the padded, resized image as float32 BGR 0-255."""
  return np.ascontiguousarray(images_rgb_uint8[..., ::-1]).astype(np.float32)


NANO = VARIANTS["nano"]
BLOCKS = {
    "nano: 3x3 stem, silu, eca": model_config("nano", act="silu", attn="eca"),
    "tiny: deep_quad stem, hswish, se": model_config("tiny", act="hswish", attn="se"),
    "nf_resnet-like: 7x7 + max pool, relu, dense convs": dataclasses.replace(
        NANO, stem_type="7x7_pool", act="relu", group_size=None, extra_conv=False, feat_mult=0.0),
    "f-like: deep stem, gelu, se, skipinit, gamma_in_act, SAME": dataclasses.replace(
        NANO, stem_type="deep", act="gelu", attn="se", skipinit=True, gamma_in_act=True, padding="same"),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_building_blocks_match_jax(name):
  cfg = BLOCKS[name]
  size = 37  # odd: uneven SAME padding and ceil-mode shortcut pooling
  model = NFNet(cfg, num_classes=9)
  params = random_params(model, seed=3)
  session = _session(onnx_export.to_onnx(cfg, params, image_size=size).SerializeToString())
  images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  expected = np.asarray(jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x, train=False)))(params, images))
  got = session.run(None, {"input": _bgr(images)})[0]
  assert expected.std() > 0.05  # the scores differ between images and tags: a real comparison
  np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_exported_trained_run_matches_the_tagger(source_run, tmp_path):  # noqa: F811
  out = tmp_path / "export"
  assert cli.main(["export", source_run, "--out", str(out), "--onnx"]) == 0
  assert sorted(os.listdir(out)) == ["config.json", "model.onnx", "params.msgpack", "selected_tags.csv"]
  session = _session(str(out / "model.onnx"))
  (inp,), (first,) = session.get_inputs(), session.get_outputs()[:1]
  size = bundle_lib.read_bundle(out).image_size
  # What WD tools read: NHWC with static H, W, a symbolic batch, float32; one output per tag.
  assert inp.type == "tensor(float)" and inp.shape[1:] == [size, size, 3] and isinstance(inp.shape[0], str)
  with open(out / "selected_tags.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["tag_id", "name", "category", "count"] and [r[2] for r in rows[1:5]] == ["9"] * 4
  assert first.shape[1] == len(rows) - 1

  tagger = Tagger.from_bundle(out, batch_size=4)
  images = sample_images(5, seed=7)
  batch = np.stack([tagger.preprocess(i) for i in images])
  expected = tagger.scores(images)
  for rows_ in (batch[:1], batch):  # dynamic batch
    got = session.run(None, {inp.name: _bgr(rows_)})[0]
    np.testing.assert_allclose(got, expected[:len(rows_)], atol=TOLERANCE, rtol=0)


def test_export_keeps_tuned_thresholds_and_adds_onnx_to_a_bundle(source_run, tmp_path):  # noqa: F811
  out = tmp_path / "bundle"
  assert cli.main(["export", source_run, "--out", str(out)]) == 0
  assert not (out / "model.onnx").exists()
  config = json.loads((out / "config.json").read_text())
  tuned = {"method": "best_f1", "default": 0.3, "by_category": {"general": 0.3, "character": 0.7}}
  config["thresholds"] = tuned  # as `sw-zoo eval` rewrites it
  (out / "config.json").write_text(json.dumps(config))
  assert cli.main(["export", source_run, "--out", str(out)]) == 0  # same checkpoint: tuning kept
  assert json.loads((out / "config.json").read_text())["thresholds"] == tuned
  assert cli.main(["export", str(out), "--onnx"]) == 0  # a bundle, in place
  assert (out / "model.onnx").exists() and bundle_lib.read_bundle(out).thresholds == tuned
  assert cli.main(["export", str(out)]) == 2  # nothing to do


HEAD_MODELS = {  # models/heads.py: every head and pooling, alone and together
    "tags + box": dict(heads=("tags", "box")),
    "heteroscedastic": dict(heads=("heteroscedastic_tags",)),
    "attention pool": dict(pool="attention", pool_heads=4),
    "attention pool, heteroscedastic + box": dict(heads=("heteroscedastic_tags", "box"), pool="attention",
                                                  pool_heads=4),
}


@pytest.mark.parametrize("name", list(HEAD_MODELS))
def test_heads_and_pooling_match_jax(name, tmp_path):
  size = 37
  model = create_model("nano", num_classes=7, **HEAD_MODELS[name])
  cfg, has_box = model.cfg, "box" in model.cfg.heads
  params = random_params(model, seed=3)
  graph = onnx_export.to_onnx(cfg, params, image_size=size)
  # The scores stay first (what WD tools read); a box head adds `box` second.
  names = ["output", "box", "embedding"] if has_box else ["output", "embedding"]
  assert [o.name for o in graph.graph.output] == names
  session = _session(graph.SerializeToString())
  images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  # One batch (one compile): the images, then their mirrors for the flip check below.
  ref = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False, return_features=True))(
      params, np.concatenate([images, images[:, :, ::-1]]))
  probs, pooled = np.asarray(jax.nn.sigmoid(ref["logits"])), np.asarray(ref["pooled"])
  box = np.asarray(ref["box"]) if has_box else None
  assert probs.std() > 0.05
  if "heteroscedastic_tags" in cfg.heads:  # the noise moves the scores: its draws are really compared
    mu = pooled @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
    assert np.abs(probs - 1 / (1 + np.exp(-mu / cfg.het_temperature))).max() > 0.05
  for n in (1, 3):  # dynamic batch: an image's outputs do not depend on the batch
    got = dict(zip(names, session.run(None, {"input": _bgr(images[:n])})))
    np.testing.assert_allclose(got["output"], probs[:n], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got["embedding"], pooled[:n], atol=TOLERANCE, rtol=0)
    if has_box:
      np.testing.assert_allclose(got["box"], box[:n], atol=TOLERANCE, rtol=0)

  # The onnxruntime backend of `Tagger`, with flip TTA: (probs, pooled, box or None), the mirror's
  # box flipped back before averaging, as JaxForward.
  with open(tmp_path / bundle_lib.ONNX_FILE, "wb") as f:
    f.write(graph.SerializeToString())
  forward = backends.OnnxForward(types.SimpleNamespace(path=str(tmp_path), image_size=size),
                                 providers=["CPUExecutionProvider"])
  try:
    got_probs, got_pooled, got_box = forward.launch(images, batch_size=4, flip=True).result()
  finally:
    forward.close()
  np.testing.assert_allclose(got_probs, 0.5 * (probs[:3] + probs[3:]), atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(got_pooled, 0.5 * (pooled[:3] + pooled[3:]), atol=TOLERANCE, rtol=0)
  if has_box:
    assert np.abs(box[:3] - flip_box(box[3:])).max() > 1e-3  # the flip-back is really exercised
    np.testing.assert_allclose(got_box, 0.5 * (box[:3] + flip_box(box[3:])), atol=TOLERANCE, rtol=0)
    # A config that does not name the box head would silently drop its output: refused instead.
    with pytest.raises(ValueError, match="box_head"):
      onnx_export.to_onnx(dataclasses.replace(cfg, heads=cfg.heads[:-1]), params, image_size=size)
  else:
    assert got_box is None
