"""`sw-zoo tag`: caption files as kohya / WD tools write them, the caption options, append mode,
unreadable images skipped, a crash never leaving a corrupted caption, and the arguments that would
lose data (bad thresholds, caption extensions, colliding captions, unwritable folders) refused before
any file is touched."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import sw_zoo
from sw_zoo import cli
from sw_zoo.inference import captions, tag_outputs
from sw_zoo.data import atomic_file
from sw_zoo.inference.tagger import Prediction
from tests.test_tagger import CHARACTERS, GENERAL, make_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
  return make_bundle(tmp_path_factory.mktemp("tag_cli") / "bundle")


def _image(path, seed, size=(48, 40), mode="RGB"):
  rng = np.random.default_rng(seed)
  channels = 4 if mode == "RGBA" else 3
  Image.fromarray(rng.integers(0, 256, (*size, channels), dtype=np.uint8), mode).save(path)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "images"
  (root / "sub").mkdir(parents=True)
  _image(root / "a.jpg", 0)
  _image(root / "b.png", 1, mode="RGBA")
  _image(root / "sub" / "c.webp", 2)
  (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  (root / "notes.md").write_text("not an image")
  return root


def _caption(path):
  return path.read_text(encoding="utf-8").rstrip("\n").split(", ")


def test_tags_a_folder_with_kohya_options(bundle_dir, folder, capsys):
  code = cli.main(["tag", str(folder), "--model", bundle_dir, "--recursive", "--thresh", "0", "--batch_size", "2",
                   "--remove_underscore", "--undesired_tags", "simple background, smile",
                   "--always_first_tags", "^_^,red_eyes", "--character_tags_first", "--use_rating_tags",
                   "--no-progress"])
  err = capsys.readouterr().err
  assert code == 0, err
  assert "skipped" in err and "broken.jpg" in err
  assert not (folder / "broken.txt").exists() and not (folder / "notes.txt").exists()
  for name in ("a.txt", "b.txt", "sub/c.txt"):
    tags = _caption(folder / name)
    assert tags[0] in ("general", "sensitive", "questionable", "explicit")  # the rating, first
    assert tags[1:3] == ["^_^", "red eyes"]  # always-first tags, in the order given; kaomoji kept
    assert tags[3:5] == [c.replace("_", " ") for c in tags[3:5]] and set(tags[3:5]) == {"char alpha", "char beta"}
    assert set(tags[5:]) == {"long hair", "holding cup"}  # the rest of general, minus undesired
  assert not list(folder.rglob("*.tmp"))


def test_not_recursive_by_default_and_dashed_options(bundle_dir, folder):
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--general-threshold", "0", "--character-threshold",
                   "1", "--caption-extension", ".caption", "--no-progress"]) == 0
  assert (folder / "a.caption").exists() and not (folder / "sub" / "c.caption").exists()
  tags = _caption(folder / "a.caption")
  assert set(tags) == set(GENERAL) and not set(tags) & set(CHARACTERS)  # underscores kept by default


def test_append_keeps_existing_tags_and_overwrite_replaces(bundle_dir, folder):
  (folder / "a.txt").write_text("my_style, long hair\n", encoding="utf-8")
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--append_tags",
                   "--remove_underscore", "--no-progress"]) == 0
  tags = _caption(folder / "a.txt")
  assert tags[:2] == ["my_style", "long hair"] and tags.count("long hair") == 1 and "smile" in tags
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--no-progress"]) == 0
  assert "my_style" not in _caption(folder / "a.txt")


def test_a_crash_while_writing_leaves_the_old_caption(bundle_dir, folder, monkeypatch):
  (folder / "a.txt").write_text("precious, hand_written\n", encoding="utf-8")

  def crash(src, dst):
    raise KeyboardInterrupt  # as if killed between writing the temp file and renaming it

  monkeypatch.setattr(atomic_file.os, "replace", crash)
  with pytest.raises(KeyboardInterrupt):
    cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--no-progress"])
  assert (folder / "a.txt").read_text(encoding="utf-8") == "precious, hand_written\n"
  assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_usage_errors(bundle_dir, tmp_path, capsys):
  assert cli.main(["tag", str(tmp_path / "missing"), "--model", bundle_dir]) == 2
  assert "no such directory" in capsys.readouterr().err
  assert cli.main(["tag", str(tmp_path), "--model", bundle_dir]) == 2
  assert "no images" in capsys.readouterr().err
  _image(tmp_path / "x.jpg", 0)
  assert cli.main(["tag", str(tmp_path), "--model", str(tmp_path / "nope")]) == 2
  assert "no such bundle directory" in capsys.readouterr().err
  assert cli.main(["tag", str(tmp_path), "--model", "not-a-registered-name"]) == 2
  assert "neither a bundle directory nor a registered name" in capsys.readouterr().err
  assert "tag" in (cli.main(["--help"]) == 0 and capsys.readouterr().out)


def test_caption_rules():
  p = Prediction(rating={"sensitive": 0.7, "general": 0.3},
                 general=[("long_hair", 0.9), ("^_^", 0.8), ("1girl", 0.7)], character=[("char_alpha", 0.95)],
                 other={"copyright": [("some_series", 0.6)]})
  style = captions.CaptionStyle(remove_underscore=True, rating="last", always_first=("1girl",))
  assert captions.caption_tags(p, style) == ["1girl", "long hair", "^_^", "char alpha", "some series", "sensitive"]
  style = captions.CaptionStyle(character_first=True, undesired=("long hair",))
  assert captions.caption_tags(p, style) == ["char_alpha", "^_^", "1girl", "some_series"]
  assert captions.merge_caption("a,b , c", ["c", "d"], ", ") == ["a", "b", "c", "d"]
  assert captions.merge_caption("a b\nc", ["c", "d"], " ") == ["a", "b", "c", "d"]
  assert captions.parse_tag_list(" x, y ,, ") == ("x", "y")
  with pytest.raises(ValueError, match="rating position"):
    captions.CaptionStyle(rating="middle")


def _snapshot(root):
  """Every file under `root` and its bytes: a refused run must leave them all as they were."""
  return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("option, value, hint", [
    ("--thresh", "1.5", None), ("--thresh", "35", "did you mean 0.35?"),
    ("--general_threshold", "-0.1", None), ("--character-threshold", "nan", None)])
def test_thresholds_outside_0_1_are_refused_before_any_caption_is_touched(bundle_dir, folder, capsys, option,
                                                                          value, hint):
  # Old behaviour: every caption replaced by an empty file, exit 0.
  (folder / "a.txt").write_text("precious, hand_written\n", encoding="utf-8")
  before = _snapshot(folder)
  assert cli.main(["tag", str(folder), "--model", bundle_dir, option, value, "--recursive",
                   "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "error:" in err and option.lstrip("-").replace("-", "_") in err and "between 0 and 1" in err
  assert hint is None or hint in err
  assert _snapshot(folder) == before


def test_append_leaves_non_utf8_captions_untouched_and_lists_them(bundle_dir, folder, capsys):
  # Old behaviour: the caption was rewritten with U+FFFD in place of every non-UTF-8 byte.
  latin1 = "café, crème brûlée\n".encode("latin-1")
  (folder / "a.txt").write_bytes(latin1)
  (folder / "b.txt").write_bytes("\ufeffmy_style\n".encode("utf-8"))  # UTF-8 with a BOM is fine
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--append_tags",
                   "--no-progress"]) == 0  # b.png was captioned, so the run still succeeds
  err = capsys.readouterr().err
  assert (folder / "a.txt").read_bytes() == latin1
  assert "a.txt is not UTF-8" in err.split("Wrote")[0] and "skipped 2 images" in err  # a.jpg, broken.jpg
  tags = _caption(folder / "b.txt")
  assert tags[0] == "my_style" and "smile" in tags


@pytest.mark.parametrize("extension", [".png", "PNG", ".txt.jpg", "", ".", "sub/x", "..\\x"])
def test_bad_caption_extensions_are_refused(bundle_dir, folder, capsys, extension):
  # Old behaviour: .png overwrote the image b.png with text.
  before = _snapshot(folder)
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0",
                   "--caption_extension", extension, "--no-progress"]) == 2
  assert "--caption_extension" in capsys.readouterr().err
  assert _snapshot(folder) == before


def test_caption_extension_without_dot_gets_one(bundle_dir, folder, capsys):
  # Old behaviour: 'txt' wrote 'atxt' beside a.jpg.
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--caption_extension", "txt",
                   "--no-progress"]) == 0
  assert (folder / "a.txt").exists() and not (folder / "atxt").exists()
  assert "(.txt)" in capsys.readouterr().err
  assert captions.normalize_extension(" caption ") == ".caption"


def test_two_images_sharing_a_caption_path_are_refused(bundle_dir, folder, capsys):
  # Old behaviour: a.png's caption replaced a.jpg's, and the run reported both as written.
  _image(folder / "a.png", 3)
  _image(folder / "sub" / "c.PNG", 4)
  before = _snapshot(folder)
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--recursive",
                   "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "2 caption files would each be written by several images" in err
  assert f"{folder / 'a.txt'} <- a.jpg, a.png" in err and "c.PNG, c.webp" in err
  assert _snapshot(folder) == before
  # Only a shared stem in one folder collides; the same stem in different folders does not.
  assert captions.caption_collisions([str(folder / "x.jpg"), str(folder / "sub" / "x.png")]) == []


def test_unwritable_folder_is_refused_before_tagging(bundle_dir, folder, capsys, monkeypatch):
  # Tests run as root, which bypasses permission bits, so a chmod 0o555 folder would still be
  # writable here; os.access is what the check consults, so the test makes it answer "read-only".
  # Old behaviour: every image listed as skipped, "Wrote 0 captions", exit 0.
  real_access = os.access
  read_only = str(folder / "sub")
  monkeypatch.setattr(captions.os, "access",
                      lambda path, mode, **kw: False if (str(path) == read_only and mode & os.W_OK)
                      else real_access(path, mode, **kw))
  before = _snapshot(folder)
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--recursive",
                   "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert f"{read_only}: folder is not writable" in err
  assert _snapshot(folder) == before
  # Without --recursive nothing goes to sub/, so the run is allowed.
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--no-progress"]) == 0


def test_a_run_that_writes_no_caption_exits_1(bundle_dir, folder, capsys, monkeypatch):
  # Old behaviour: exit 0 with "Wrote 0 captions". Writes failing past the up-front check (a full
  # disk) or every image unreadable: the skipped images are listed, then exit 1.
  def disk_full(path, text):
    raise OSError(28, "No space left on device", path)

  monkeypatch.setattr(captions, "atomic_write_text", disk_full)
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert "No space left on device" in err and "broken.jpg" in err and "no caption written" in err
  monkeypatch.undo()
  only_broken = folder / "sub"
  for p in only_broken.iterdir():
    p.unlink()
  (only_broken / "x.jpg").write_bytes(b"not a jpeg")
  assert cli.main(["tag", str(only_broken), "--model", bundle_dir, "--thresh", "0", "--no-progress"]) == 1
  assert "skipped" in capsys.readouterr().err and os.listdir(only_broken) == ["x.jpg"]


# ---- Formats, results files and kohya's other options --------------------------------------------


def test_kohya_and_prompt_caption_options():
  p = Prediction(rating={"general": 0.8, "sensitive": 0.2},
                 general=[("long_hair", 0.9), ("holding_(object)", 0.6)],
                 character=[("ganyu_(genshin_impact)", 0.97), ("chara_(cos)_(series)", 0.5), ("plain_chara", 0.4)],
                 other={"copyright": [("genshin_impact", 0.95)]})
  style = captions.CaptionStyle(character_expand=True, character_first=True)
  assert captions.caption_tags(p, style) == [
      "ganyu", "genshin_impact", "chara_(cos)", "series", "plain_chara", "long_hair", "holding_(object)"]
  style = captions.CaptionStyle(remove_underscore=True, escape=True, weights=True,
                                replacements=captions.parse_tag_replacement(r"long_hair,long hair\, flowing;plain_chara,pc"))
  assert captions.caption_tags(p, style)[:3] == [
      "(long hair, flowing:0.90)", r"(holding \(object\):0.60)", r"(ganyu \(genshin impact\):0.97)"]
  assert "(pc:0.40)" in captions.caption_tags(p, style)
  with pytest.raises(ValueError, match="expected 'source,target' pairs"):
    captions.parse_tag_replacement("a,b,c")
  lines = tag_outputs.hydrus_lines(p, captions.CaptionStyle(character_expand=True, undesired=("holding_(object)",)))
  assert lines == ["long hair", "character:ganyu", "series:genshin impact", "character:chara (cos)", "series:series",
                   "character:plain chara", "rating:general"]


def _records(path):
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_hydrus_sidecars_and_jsonl_scores_match_the_tagger(bundle_dir, folder, tmp_path, capsys):
  out = tmp_path / "tags.jsonl"
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--recursive", "--format", "hydrus", "--thresh", "0.5",
                   "--output_path", str(out), "--tta", "flip", "--backend", "jax", "--no-progress"]) == 0
  err = capsys.readouterr().err
  assert "Tag frequency over 3 images" in err and "tta flip" in err
  sidecar = (folder / "a.jpg.txt").read_text(encoding="utf-8").splitlines()
  assert not (folder / "a.txt").exists() and (folder / "sub" / "c.webp.txt").exists()
  assert all(" " not in t or "_" not in t for t in sidecar) and sidecar[-1].startswith("rating:")
  records = {r["path"]: r for r in _records(out)}
  assert set(records) == {"a.jpg", "b.png", "sub/c.webp"}  # the broken image is skipped, not recorded
  tagger = sw_zoo.load_pretrained(bundle_dir, backend="jax")
  expected = tagger.predict(str(folder / "a.jpg"), thresholds=0.5, tta="flip")
  assert records["a.jpg"]["general"] == pytest.approx(dict(expected.general), abs=1e-5)
  assert records["a.jpg"]["rating"] == pytest.approx(expected.rating, abs=1e-5)
  assert [f"character:{c.replace('_', ' ')}" for c in records["a.jpg"]["character"]] == \
      [t for t in sidecar if t.startswith("character:")]
  assert records["a.jpg"]["caption"] == [t for t, _ in expected.general] + [t for t, _ in expected.character]


def test_json_results_onnx_backend_and_a_refused_overwrite(bundle_dir, folder, tmp_path, capsys):
  out = tmp_path / "tags.json"
  out.write_text("someone else's file\n")
  args = ["tag", str(folder), "--model", bundle_dir, "--format", "none", "--output_path", str(out), "--thresh", "0.4",
          "--backend", "onnx", "--no-progress"]
  assert cli.main(args) == 2
  assert "--force" in capsys.readouterr().err and out.read_text() == "someone else's file\n"
  assert cli.main(args + ["--force"]) == 0
  data = json.loads(out.read_text(encoding="utf-8"))
  assert data["model"]["thresholds"]["general"] == 0.4 and set(data["images"]) == {"a.jpg", "b.png"}
  assert not list(folder.glob("*.txt"))  # --format none: no sidecars
  jax_scores = sw_zoo.load_pretrained(bundle_dir, backend="jax").predict(str(folder / "b.png"), thresholds=0.4)
  assert data["images"]["b.png"]["general"] == pytest.approx(dict(jax_scores.general), abs=1e-4)
  # json sidecars, and an interrupted run that leaves the previous results file as it was
  before = out.read_bytes()

  def interrupted(*a, **k):
    raise KeyboardInterrupt

  import sw_zoo.inference.tag_outputs as outputs_module
  original = outputs_module.ResultsFile.add
  try:
    outputs_module.ResultsFile.add = interrupted
    with pytest.raises(KeyboardInterrupt):
      cli.main(args + ["--force"])
  finally:
    outputs_module.ResultsFile.add = original
  assert out.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--format", "json", "--no-progress"]) == 0
  assert set(json.loads((folder / "a.json").read_text())) == {"path", "rating", "general", "character", "other", "caption"}


@pytest.mark.parametrize("args, message", [
    (["--category_threshold", "copyright=2"], "between 0 and 1"),
    (["--category_threshold", "rating=0.5"], "expected CATEGORY=VALUE"),
    (["--category_threshold", "copyright"], "expected CATEGORY=VALUE"),
    (["--tag_replacement", "a,b,c"], "source,target"),
    (["--format", "none"], "--output_path"),
    (["--output_path", "tags.csv"], ".json or .jsonl")])
def test_bad_new_options_are_refused_before_anything_is_written(bundle_dir, folder, capsys, args, message):
  before = _snapshot(folder)
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--no-progress", *args]) == 2
  assert message in capsys.readouterr().err
  assert _snapshot(folder) == before


def test_per_category_thresholds_and_frequency_listing(bundle_dir, folder, capsys):
  assert cli.main(["tag", str(folder), "--model", bundle_dir, "--thresh", "0", "--category_threshold", "character=1",
                   "--frequency_tags", "--no-progress"]) == 0
  err = capsys.readouterr().err
  assert not set(_caption(folder / "a.txt")) & set(CHARACTERS)
  assert "every tag" in err and all(f"  {t}" in err for t in GENERAL)
