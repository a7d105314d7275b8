"""`sw-zoo tag`: caption files as kohya / WD tools write them, the caption options, append mode,
unreadable images skipped, and a crash never leaving a corrupted caption."""
import os

import numpy as np
import pytest
from PIL import Image

from sw_zoo import cli
from sw_zoo.inference import captions
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
                   "1.01", "--caption-extension", ".caption", "--no-progress"]) == 0
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
  assert cli.main(["tag", str(tmp_path / "missing"), "--model", bundle_dir]) == 1
  assert "no such directory" in capsys.readouterr().err
  assert cli.main(["tag", str(tmp_path), "--model", bundle_dir]) == 1
  assert "no images" in capsys.readouterr().err
  _image(tmp_path / "x.jpg", 0)
  assert cli.main(["tag", str(tmp_path), "--model", str(tmp_path / "nope")]) == 1
  assert "no such bundle directory" in capsys.readouterr().err
  assert cli.main(["tag", str(tmp_path), "--model", "not-a-registered-name"]) == 1
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
