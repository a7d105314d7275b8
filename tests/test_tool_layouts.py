"""`sw-zoo export --layout kohya|webui|comfyui|bundle`: each WD tool, emulated from its documented
loading and preprocessing (tests/wd_tools.py), finds exactly the exported files and names every
score as sw_zoo's own Tagger does; vocabularies a tool cannot read are refused (or, with --force,
adapted so the tool still names them right); --image-size and --precision; and nothing sw_zoo did
not write is ever replaced. All on the shared 3-step tiny run (`source_run`)."""
import csv
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from sw_zoo import cli
from sw_zoo.data import vocab as vocab_lib
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.inference import onnx_export, tool_layouts
from sw_zoo.inference.tagger import Tagger
from tests import wd_tools
from tests.test_bundle import source_run  # noqa: F401  (fixture)
from tests.test_train import tiny_data  # noqa: F401  (fixture)

EXACT = 1e-4  # same pixels in, same graph: onnxruntime vs JAX
TRAINED = 32  # the shared run's image size


def _picture(path, width, height, seed, mode="RGB"):
  """A smooth picture (gradient + shapes): resizing filters barely change it, unlike noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                   np.full_like(x, int(rng.integers(0, 256)))], -1).astype(np.uint8)
  image = Image.fromarray(base)
  draw = ImageDraw.Draw(image)
  for _ in range(3):
    x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
    draw.ellipse([x0, y0, x0 + width // 4, y0 + height // 4], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
  if mode == "RGBA":
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:, : width // 4] = 0  # a transparent band: composited on white by tools that honour alpha
    image = Image.fromarray(np.dstack([np.asarray(image), alpha]), "RGBA")
  image.save(path)
  return str(path)


def _export(*args):
  return cli.main(["export", *map(str, args)])


def _scores_by_name(tagger, path):
  return dict(zip(tagger.tags.names, map(float, tagger.scores(path))))


def _assert_named_scores(found, expected, atol=EXACT):
  """Every (name, score) the tool reported is sw_zoo's score for that name."""
  assert found
  for name, score in found:
    assert abs(score - expected[name]) <= atol, (name, score, expected[name])


def _assert_same_choice(found, expected, threshold, names, strict=False):
  """The tool kept exactly the tags of `names` at or above (strictly above) the threshold
  (scores within EXACT of the threshold may fall either way)."""
  got = {n for n, _ in found}
  for name in names:
    s = expected[name]
    if abs(s - threshold) > EXACT:
      assert (name in got) == (s > threshold if strict else s >= threshold), (name, s, threshold)


def _tagger_at(source, tmp_path, size, tags=None):
  """sw_zoo's reference: a bundle of the same run at `size` (no ONNX)."""
  out = tmp_path / f"reference_{size}"
  assert _export(source, "--out", out, "--image-size", size, *(["--tags", tags] if tags else [])) == 0
  return Tagger.from_bundle(out, batch_size=4, backend="jax")


def _median_threshold(tagger, paths, category="general"):
  index = tagger.tags.category_indices(vocab_lib.CATEGORY_GENERAL if category == "general" else vocab_lib.CATEGORY_CHARACTER)
  return float(np.median(tagger.scores(paths)[:, index]))


def _names(tags, code):
  return [t.name for t in tags if t.category == code]


@pytest.fixture(scope="module")
def tagger_448(source_run, tmp_path_factory):  # noqa: F811
  return _tagger_at(source_run, tmp_path_factory.mktemp("ref448"), 448)


@pytest.fixture(scope="module")
def tagger_32(source_run):  # noqa: F811
  return Tagger.from_bundle(os.path.join(source_run, "bundle"), batch_size=4, backend="jax")


# ---- Each tool on a fitting vocabulary ---------------------------------------------------------------


def test_kohya_finds_the_export_and_names_every_score(source_run, tagger_448, tmp_path, capsys):  # noqa: F811
  models = tmp_path / "wd14_tagger_model"
  assert _export(source_run, "--layout", "kohya", "--out", models, "--name", "me/demo") == 0
  assert "--model_dir" in capsys.readouterr().out
  assert os.listdir(models) == ["me_demo"] and sorted(os.listdir(models / "me_demo")) == ["model.onnx", "selected_tags.csv"]
  graph = onnx.load(models / "me_demo" / "model.onnx")
  dims = graph.graph.input[0].type.tensor_type.shape.dim
  assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [448, 448, 3]  # any batch, kohya's 448
  assert json.loads({p.key: p.value for p in graph.metadata_props}["sw_zoo.tags.layout"])["tools"]["kohya"] == "fits"

  # 448 x 300: the padded square is already 448, so kohya's resize is a no-op and scores are exact.
  exact = [_picture(tmp_path / f"wide{i}.png", 448, 300 - 40 * i, seed=i) for i in range(5)]
  threshold = _median_threshold(tagger_448, exact)
  results = wd_tools.kohya_tag(str(models), "me/demo", exact, batch_size=2, general_threshold=threshold,
                               character_threshold=threshold)
  tags = tagger_448.tags
  for path, result in zip(exact, results):
    expected = _scores_by_name(tagger_448, path)
    _assert_named_scores(result.general + result.character, expected)
    _assert_same_choice(result.general, expected, threshold, _names(tags, 0))
    _assert_same_choice(result.character, expected, threshold, _names(tags, 4))
    ratings = {n: expected[n] for n in _names(tags, 9)}
    assert result.rating == max(ratings, key=ratings.get)
    np.testing.assert_allclose([result.ratings[n] for n in ratings], list(ratings.values()), atol=EXACT)

  # Larger and taller images: kohya resizes with INTER_AREA (sw_zoo: bicubic): close, not equal.
  loose = [_picture(tmp_path / "big.png", 900, 500, seed=9), _picture(tmp_path / "tall.png", 250, 640, seed=10)]
  for path, result in zip(loose, wd_tools.kohya_tag(str(models), "me/demo", loose, batch_size=2,
                                                    general_threshold=0.0, character_threshold=0.0)):
    expected = _scores_by_name(tagger_448, path)
    _assert_named_scores(result.general + result.character, expected, atol=0.02)


def test_webui_lists_the_folder_and_names_every_score(source_run, tagger_32, tmp_path, capsys):  # noqa: F811
  models = tmp_path / "TaggerOnnx"
  (models / "wd14-vit.v2").mkdir(parents=True)  # a built-in's folder: listed, downloaded, never ours
  (models / "wd14-vit.v2" / "model.onnx").write_bytes(b"theirs")
  (models / "wd14-vit.v2" / "selected_tags.csv").write_text("theirs")
  # Any other name would stop the extension's model list from loading: refused before writing.
  assert _export(source_run, "--layout", "webui", "--out", models, "--name", "demo") == 2
  assert "NotImplementedError" in capsys.readouterr().err and not (models / "demo").exists()
  assert _export(source_run, "--layout", "webui", "--out", models) == 0
  assert sorted(wd_tools.webui_models(str(models))) == [wd_tools.WEBUI_LOCAL]
  assert (models / "wd14-vit.v2" / "model.onnx").read_bytes() == b"theirs"

  exact = _picture(tmp_path / "exact.png", TRAINED, 20, seed=1)  # padded square = 32: no resize
  expected = _scores_by_name(tagger_32, exact)
  threshold = _median_threshold(tagger_32, [exact])
  result = wd_tools.webui_tag(str(models), wd_tools.WEBUI_LOCAL, exact, threshold=threshold)
  tags = tagger_32.tags
  assert set(result.ratings) == set(_names(tags, 9))
  _assert_named_scores(list(result.ratings.items()) + result.general, expected)
  _assert_same_choice(result.general, expected, threshold, _names(tags, 0) + _names(tags, 4))

  # RGBA with a transparent band, larger than the graph: composited on white, INTER_AREA.
  rgba = _picture(tmp_path / "rgba.png", 120, 80, seed=2, mode="RGBA")
  result = wd_tools.webui_tag(str(models), wd_tools.WEBUI_LOCAL, rgba, threshold=0.0)
  _assert_named_scores(result.general, _scores_by_name(tagger_32, rgba), atol=0.05)


def test_comfyui_flat_files_name_every_score(source_run, tagger_32, tmp_path):  # noqa: F811
  models = tmp_path / "models"
  models.mkdir()
  (models / "other.onnx").write_bytes(b"theirs")
  (models / "other.csv").write_text("theirs")
  for _ in range(2):  # writing again over its own files is fine
    assert _export(source_run, "--layout", "comfyui", "--out", models, "--name", "demo") == 0
  assert sorted(os.listdir(models)) == ["demo.csv", "demo.onnx", "other.csv", "other.onnx"]
  assert wd_tools.comfyui_models(str(models)) == ["demo", "other"]

  exact = _picture(tmp_path / "exact.png", 20, TRAINED, seed=3)  # longer side = 32: no resize
  expected = _scores_by_name(tagger_32, exact)
  threshold = _median_threshold(tagger_32, [exact])
  result = wd_tools.comfyui_tag(str(models), "demo", exact, threshold=threshold, character_threshold=threshold)
  tags = tagger_32.tags
  _assert_named_scores(result.general + result.character, expected)
  _assert_same_choice(result.general, expected, threshold, _names(tags, 0), strict=True)
  _assert_same_choice(result.character, expected, threshold, _names(tags, 4), strict=True)
  assert not {n for n, _ in result.general + result.character} & set(_names(tags, 9))


def test_bundle_layout_works_in_the_space_and_documents_its_rows(source_run, tagger_32, tmp_path):  # noqa: F811
  out = tmp_path / "bundle"
  assert _export(source_run, "--out", out, "--onnx") == 0
  config = json.loads((out / "config.json").read_text())
  layout = config["tags"]["layout"]
  assert layout["rows"] == {"rating": [[0, 4]], "general": [[4, 59]], "character": [[59, 65]]}
  assert layout["wd_order"] and set(layout["tools"].values()) == {"fits"}
  assert config["onnx"] == {"file": "model.onnx", "image_size": TRAINED, "precision": "fp32"}
  meta = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
  assert json.loads(meta["sw_zoo.tags.layout"])["rows"] == layout["rows"]
  image = _picture(tmp_path / "exact.png", TRAINED, 24, seed=4)
  expected = _scores_by_name(tagger_32, image)
  result = wd_tools.space_tag(str(out), image, general_threshold=0.0, character_threshold=0.0)
  _assert_named_scores(list(result.ratings.items()) + result.general + result.character, expected)


# ---- Vocabularies the tools cannot read as they are -----------------------------------------------------


def _vocab_file(path, tags):
  vocab_lib.write_selected_tags(path, vocab_lib.TagVocab(tags))
  return str(path)


@pytest.fixture(scope="module")
def run_tags(source_run):  # noqa: F811
  return bundle_lib.read_bundle(os.path.join(source_run, "bundle")).tags


def test_no_ratings_and_a_copyright_category_is_refused_then_adapted_with_force(source_run, run_tags, tmp_path,
                                                                                 capsys):  # noqa: F811
  # The rating outputs become four copyright tags: 0 ratings, an extra category, same head.
  tags = [vocab_lib.Tag(f"series_{t.name}", vocab_lib.CATEGORY_COPYRIGHT) if t.category == 9 else t for t in run_tags]
  custom = _vocab_file(tmp_path / "custom.csv", tags)
  for layout, words in (("kohya", ["kohya", "0 rating rows", "4 copyright rows",
                                   "read the first 4 general tags as ratings"]),
                        ("webui", ["webui-wd14-tagger", "0 rating rows", "4 general tags would be shown as ratings"]),
                        ("comfyui", ["ComfyUI", "4 copyright rows"])):
    out = tmp_path / f"refused_{layout}"
    assert _export(source_run, "--layout", layout, "--out", out, "--tags", custom) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words + ["Nothing was written", "--force"]), err
    assert not out.exists()

  reference = _tagger_at(source_run, tmp_path, TRAINED, tags=custom)
  copyright_names = [t.name for t in tags if t.category == vocab_lib.CATEGORY_COPYRIGHT]
  image = _picture(tmp_path / "exact.png", TRAINED, 20, seed=5)
  expected = _scores_by_name(reference, image)
  every = set(reference.tags.names)

  assert _export(source_run, "--layout", "webui", "--out", tmp_path / "webui", "--tags", custom,
                 "--force") == 0
  assert "placeholder rating" in capsys.readouterr().out
  result = wd_tools.webui_tag(str(tmp_path / "webui"), wd_tools.WEBUI_LOCAL, image, threshold=0.0)
  assert set(result.ratings) == {f"placeholder_rating_{k}" for k in range(4)} and max(result.ratings.values()) == 0
  _assert_named_scores(result.general, expected)
  assert {n for n, _ in result.general} == every  # every real tag, copyright included, correctly named

  assert _export(source_run, "--layout", "comfyui", "--out", tmp_path / "comfy", "--name", "m", "--tags", custom,
                 "--force") == 0
  result = wd_tools.comfyui_tag(str(tmp_path / "comfy"), "m", image, threshold=0.0, character_threshold=0.0)
  _assert_named_scores(result.general + result.character, expected)
  assert set(copyright_names) <= {n for n, _ in result.general}
  assert {n for n, _ in result.general + result.character} == every

  # kohya at 448, batched, against a 448 reference with the same vocabulary.
  assert _export(source_run, "--layout", "kohya", "--out", tmp_path / "kohya", "--name", "m", "--tags", custom,
                 "--force") == 0
  reference = _tagger_at(source_run, tmp_path, 448, tags=custom)
  paths = [_picture(tmp_path / f"k{i}.png", 448, 320, seed=20 + i) for i in range(3)]
  for path, result in zip(paths, wd_tools.kohya_tag(str(tmp_path / "kohya"), "m", paths, batch_size=2,
                                                    general_threshold=0.0, character_threshold=0.0)):
    assert result.rating == "placeholder_rating_0"
    _assert_named_scores(result.general + result.character, _scores_by_name(reference, path))
    assert {n for n, _ in result.general + result.character} == every


def test_row_order_is_fixed_silently_for_positional_tools(source_run, run_tags, tmp_path, capsys):  # noqa: F811
  # Characters first, then general, ratings last: kohya would misname everything as is.
  order = sorted(range(len(run_tags)), key=lambda i: {4: 0, 0: 1, 9: 2}[run_tags[i].category])
  shuffled = _vocab_file(tmp_path / "shuffled.csv", [run_tags[i] for i in order])
  # (the csv is read as the model's rows: a relabelled model, still 4 ratings, general, character)
  assert _export(source_run, "--layout", "kohya", "--out", tmp_path / "kohya", "--name", "m", "--tags", shuffled) == 0
  assert "rows reordered to rating, general, character" in capsys.readouterr().out
  with open(tmp_path / "kohya" / "m" / "selected_tags.csv") as f:
    categories = [row[2] for row in list(csv.reader(f))[1:]]
  assert categories == sorted(categories, key=lambda c: {"9": 0, "0": 1, "4": 2}[c])
  reference = _tagger_at(source_run, tmp_path, 448, tags=shuffled)
  bundle = tmp_path / "bundle"
  assert _export(source_run, "--out", bundle, "--tags", shuffled, "--onnx") == 0
  layout = json.loads((bundle / "config.json").read_text())["tags"]["layout"]
  assert not layout["wd_order"] and "reorders the rows without loss" in layout["tools"]["kohya"]
  assert layout["tools"]["space"] == "fits"  # the Space finds rows by category
  assert bundle_lib.read_bundle(bundle).tags == vocab_lib.read_selected_tags(shuffled)  # the bundle keeps its order
  path = _picture(tmp_path / "k.png", 448, 300, seed=30)
  (result,) = wd_tools.kohya_tag(str(tmp_path / "kohya"), "m", [path], general_threshold=0.0, character_threshold=0.0)
  expected = _scores_by_name(reference, path)
  _assert_named_scores(result.general + result.character, expected)
  ratings = {n: expected[n] for n in _names(reference.tags, 9)}
  assert result.rating == max(ratings, key=ratings.get)


# ---- Sizes, arguments and precisions ----------------------------------------------------------------------


def test_arguments_are_checked_before_anything_is_written(source_run, tmp_path, capsys):  # noqa: F811
  out = tmp_path / "out"
  assert _export(source_run, "--layout", "kohya", "--out", out, "--image-size", 320) == 2
  err = capsys.readouterr().err
  assert "--image-size 320 with --layout kohya" in err and "448" in err
  assert _export(source_run, "--layout", "webui") == 2 and "needs --out" in capsys.readouterr().err
  assert _export(source_run, "--out", out, "--image-size", 0) == 2 and "--image-size 0" in capsys.readouterr().err
  assert _export(source_run, "--out", out, "--name", "x") == 2 and "--name" in capsys.readouterr().err
  assert _export(source_run, "--layout", "comfyui", "--out", out, "--name", "../up") == 2
  with pytest.raises(SystemExit):
    _export(source_run, "--layout", "onnxruntime-web", "--out", out)
  assert not out.exists()


def test_image_size_builds_the_graph_and_bundle_at_that_size(source_run, tmp_path, capsys):  # noqa: F811
  out = tmp_path / "b64"
  assert _export(source_run, "--out", out, "--onnx", "--image-size", 64) == 0
  assert "trained at 32 px" in capsys.readouterr().out
  assert bundle_lib.read_bundle(out).image_size == 64
  session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
  assert session.get_inputs()[0].shape[1:] == [64, 64, 3]
  tagger = Tagger.from_bundle(out, backend="jax")
  image = _picture(tmp_path / "p.png", 64, 40, seed=6)
  got = session.run(None, {"input": onnx_export.wd_input(tagger.preprocess(image)[None])})[0][0]
  np.testing.assert_allclose(got, tagger.scores(image), atol=EXACT)


# Measured on the shared tiny run (3 steps, 32 px, its 20 validation images): max |score diff|
# fp16 1.7e-4, int8 5.9e-3 (agreement F1 1.0 / 0.999); the bounds leave ~10x for other CPUs.
BOUNDS = {"fp16": 2e-3, "int8": 0.05}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_precision_exports_load_stay_close_and_report_agreement(source_run, tmp_path, capsys, precision):  # noqa: F811
  out = tmp_path / precision
  assert _export(source_run, "--out", out, "--precision", precision) == 0
  printed = capsys.readouterr().out
  assert f"{precision} vs fp32 on" in printed and "img/s" in printed and "micro-F1" in printed
  config = json.loads((out / "config.json").read_text())
  report = config["onnx"]["check"]
  assert config["onnx"]["precision"] == precision and report["checked_on"].startswith("20 validation images")
  assert report["max_abs_diff"] < BOUNDS[precision] and report["agreement_f1"] > 0.9
  assert set(report["micro_f1"]) == {"fp32", precision} and set(report["speed"]["images_per_s"]) == {"fp32", precision}
  meta = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
  assert json.loads(meta["sw_zoo.precision"])["precision"] == precision

  # Loads in onnxruntime, float32 in and out, close to the float32 graph of the same run.
  tagger = Tagger.from_bundle(out, backend="jax")
  session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
  assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
  images = [_picture(tmp_path / f"p{i}.png", 40, 30, seed=i) for i in range(4)]
  got = session.run(None, {"input": onnx_export.wd_input(np.stack([tagger.preprocess(p) for p in images]))})[0]
  assert np.abs(got - tagger.scores(images)).max() < BOUNDS[precision]
  # sw_zoo's own onnx backend runs the converted graph, and says which it is.
  converted = Tagger.from_bundle(out, backend="onnx")
  assert converted.describe_backend() == f"onnx {precision}" and tagger.describe_backend() == "jax"
  assert np.abs(converted.scores(images) - tagger.scores(images)).max() < BOUNDS[precision]


def test_a_converted_tool_export_keeps_one_onnx_and_one_csv(source_run, tmp_path):  # noqa: F811
  models = tmp_path / "TaggerOnnx"
  assert _export(source_run, "--layout", "webui", "--out", models, "--precision", "int8") == 0
  q = models / wd_tools.WEBUI_LOCAL
  assert wd_tools.webui_models(str(models)) == {wd_tools.WEBUI_LOCAL: (str(q / "model.onnx"), str(q / "selected_tags.csv"))}
  assert sorted(os.listdir(q)) == ["model.onnx", "selected_tags.csv"]
  meta = {p.key: p.value for p in onnx.load(q / "model.onnx").metadata_props}
  assert json.loads(meta["sw_zoo.precision"])["precision"] == "int8"


# ---- Never replacing what sw_zoo did not write -----------------------------------------------------------


def test_foreign_files_are_never_replaced_without_force(source_run, tmp_path, capsys):  # noqa: F811
  kohya = tmp_path / "kohya"
  (kohya / "SmilingWolf_wd-v1-4-convnext-tagger-v2").mkdir(parents=True)
  theirs = kohya / "SmilingWolf_wd-v1-4-convnext-tagger-v2" / "model.onnx"
  theirs.write_bytes(b"a real downloaded model")
  assert _export(source_run, "--layout", "kohya", "--out", kohya, "--name", "SmilingWolf/wd-v1-4-convnext-tagger-v2") == 2
  assert "--force" in capsys.readouterr().err and theirs.read_bytes() == b"a real downloaded model"

  comfy = tmp_path / "comfy"
  comfy.mkdir()
  (comfy / "a.onnx").write_bytes(b"theirs")
  (comfy / "b.csv").write_text("theirs")
  for name in ("a", "b"):
    assert _export(source_run, "--layout", "comfyui", "--out", comfy, "--name", name) == 2
    assert "sw_zoo did not write" in capsys.readouterr().err
  assert sorted(os.listdir(comfy)) == ["a.onnx", "b.csv"]
  assert (comfy / "a.onnx").read_bytes() == b"theirs" and (comfy / "b.csv").read_text() == "theirs"
  assert _export(source_run, "--layout", "comfyui", "--out", comfy, "--name", "a", "--force") == 0
  assert onnx.load(comfy / "a.onnx").producer_name == "sw_zoo"
  assert not [f for f in os.listdir(comfy) if f.endswith(".tmp")]


def test_help_names_the_layouts_sizes_and_precisions(capsys):
  with pytest.raises(SystemExit):
    cli.main(["export", "--help"])
  text = capsys.readouterr().out
  for words in ("--layout {bundle,kohya,webui,comfyui}", "--precision {fp32,fp16,int8}", "--image-size",
                "--check-images", "--name", "OUT/<NAME>.onnx + OUT/<NAME>.csv", "--repo_id NAME", "always 448 px"):
    assert words in text, words


def test_layout_findings_as_data():
  def vocab(codes):
    return vocab_lib.TagVocab([vocab_lib.Tag(f"t{i}", c) for i, c in enumerate(codes)])

  wd = vocab([9, 9, 9, 9, 0, 0, 4])
  assert all(tool_layouts.findings(wd, layout).fits for layout in ("kohya", "webui", "comfyui", "space"))
  general_only = vocab([9, 9, 9, 9, 0, 0])
  assert tool_layouts.findings(general_only, "kohya").fits
  assert "no character rows" in tool_layouts.findings(general_only, "comfyui").refused[0]
  plan = tool_layouts.plan(general_only, "comfyui", force=True)
  assert plan.tags.names[-1] == "placeholder_character" and plan.rows[-1] == -1
  e621 = vocab([9, 9, 9, 0, 0, 1, 4])  # 3 ratings and an artist
  found = tool_layouts.findings(e621, "kohya")
  assert len(found.refused) == 2 and "3 rating rows" in found.refused[0] and "1 artist row" in found.refused[1]
  assert tool_layouts.findings(e621, "webui").refused and not tool_layouts.findings(e621, "comfyui").order
  plan = tool_layouts.plan(e621, "kohya", force=True)
  assert plan.rows.tolist() == [0, 1, 2, -1, 3, 4, 5, 6]
  assert [t.category for t in plan.tags] == [9, 9, 9, 9, 0, 0, 0, 4]
  with pytest.raises(tool_layouts.LayoutRefused, match="3 rating rows"):
    tool_layouts.plan(e621, "kohya")
  params = {"head": {"kernel": np.arange(14, dtype=np.float32).reshape(2, 7), "bias": np.arange(7, dtype=np.float32)}}
  head = tool_layouts.adapt_head(params, plan.rows)["head"]
  assert head["kernel"][:, 3].tolist() == [0, 0] and head["bias"][3] == tool_layouts.PLACEHOLDER_LOGIT
  assert head["kernel"][:, 4].tolist() == params["head"]["kernel"][:, 3].tolist()


def test_precision_checks_on_given_images_or_refuses_without_any(source_run, tmp_path, capsys):  # noqa: F811
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(3):
    _picture(folder / f"{i}.png", 50, 30 + 5 * i, seed=i)
  out = tmp_path / "fp16"
  assert _export(source_run, "--out", out, "--precision", "fp16", "--check-images", folder) == 0
  report = json.loads((out / "config.json").read_text())["onnx"]["check"]
  assert report["checked_on"] == f"3 images under {folder}" and "micro_f1" not in report  # no labels there
  assert report["max_abs_diff"] < BOUNDS["fp16"]

  # A bundle whose run (and dataset) is gone, and no --check-images: refused, nothing written.
  orphan = tmp_path / "orphan"
  assert _export(source_run, "--out", orphan) == 0
  config = json.loads((orphan / "config.json").read_text())
  config["source"]["workdir"] = str(tmp_path / "gone")
  (orphan / "config.json").write_text(json.dumps(config))
  capsys.readouterr()
  assert _export(orphan, "--layout", "comfyui", "--out", tmp_path / "comfy", "--precision", "int8") == 2
  assert "--check-images DIR" in capsys.readouterr().err and not (tmp_path / "comfy").exists()
