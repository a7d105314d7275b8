"""`sw-zoo serve`'s web page in a real headless Chromium (the system's; launch/test.sh installs it):
upload an image through the file input, read the tags and scores from the page and compare them
with `Tagger.predict`, move the threshold sliders (filtering here, re-querying below what was
fetched), copy the caption, and keep screenshots (desktop and phone width) for a human to look at:
their paths are printed, and they are copied to $SW_ZOO_TEST_ARTIFACTS when it is set."""
import os
import shutil

import numpy as np
import pytest

import sw_zoo
from benchmarks import serve_load
from sw_zoo.inference import captions
from tests.test_tagger import make_bundle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (launch/test.sh installs it with apt-get)")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
  return make_bundle(tmp_path_factory.mktemp("serve_browser") / "bundle")


@pytest.fixture(scope="module")
def tagger(bundle_dir):
  return sw_zoo.load_pretrained(bundle_dir, batch_size=4, backend="onnx")


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
  port = serve_load.free_port()
  log = tmp_path_factory.mktemp("serve_browser_log") / "server.log"
  proc = serve_load.start_server(bundle_dir, port, "--backend", "onnx", "--max-batch", "4", log_path=str(log),
                                 timeout=90)
  yield f"http://127.0.0.1:{port}"
  assert serve_load.stop_server(proc, timeout=20) == 0, log.read_text()


@pytest.fixture(scope="module")
def browser():
  from playwright.sync_api import sync_playwright

  with sync_playwright() as playwright:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    yield browser
    browser.close()


def keep_screenshot(page, path):
  page.screenshot(path=str(path), full_page=True)
  print(f"\nscreenshot: {path}")
  folder = os.environ.get("SW_ZOO_TEST_ARTIFACTS")
  if folder:
    os.makedirs(folder, exist_ok=True)
    shutil.copy(path, folder)
    print(f"copied to {os.path.join(folder, os.path.basename(path))}")


def shown(page, list_id):
  return page.eval_on_selector_all(f"#{list_id} li[data-tag]",
                                   "items => items.map(li => [li.dataset.tag, parseFloat(li.dataset.score)])")


def assert_page_shows(page, tagger, data):
  """The page's lists and caption are what predict() gives at the sliders' thresholds."""
  general = float(page.input_value("#general-threshold"))
  character = float(page.input_value("#character-threshold"))
  expected = tagger.predict(data, thresholds={"general": general, "character": character})
  for list_id, want in (("general", expected.general), ("character", expected.character),
                        ("rating", sorted(expected.rating.items(), key=lambda kv: -kv[1]))):
    got = shown(page, list_id)
    assert [name for name, _ in got] == [name for name, _ in want], list_id
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=2e-6)
  caption = ", ".join(captions.caption_tags(expected, captions.CaptionStyle()))
  assert page.input_value("#caption") == caption
  return expected, caption


@pytest.mark.slow  # ~15-30 s: a server process and a browser
def test_page_tags_an_uploaded_image(server, browser, tagger, tmp_path):
  image_path = tmp_path / "post.jpg"
  data = serve_load.booru_jpegs(1, shapes=((600, 450),), seed=4)[0]
  image_path.write_bytes(data)
  context = browser.new_context(viewport={"width": 1100, "height": 800},
                                permissions=["clipboard-read", "clipboard-write"])
  page = context.new_page()
  errors = []
  page.on("pageerror", lambda e: errors.append(str(e)))
  page.goto(server + "/")
  page.wait_for_selector("body[data-ready='1']")
  assert "nano" in page.inner_text("#model")
  # The sliders start at the model's own thresholds (make_bundle: 0.5).
  assert page.input_value("#general-threshold") == "0.5" and page.input_value("#character-threshold") == "0.5"

  page.set_input_files("#file", str(image_path))
  page.wait_for_selector("body[data-state='tagged']", timeout=30_000)
  _, caption = assert_page_shows(page, tagger, data)
  assert shown(page, "general"), "expected some general tags above 0.5 for this image"

  page.click("#copy")
  assert page.evaluate("navigator.clipboard.readText()") == caption

  # Above the fetched floor: filtered in the page. Below it: the page asks the server again.
  page.eval_on_selector("#general-threshold", "el => { el.value = '0.2'; el.dispatchEvent(new Event('input')); }")
  assert_page_shows(page, tagger, data)
  page.eval_on_selector("#character-threshold", "el => { el.value = '0.03'; el.dispatchEvent(new Event('input')); }")
  page.wait_for_selector("body[data-state='tagged']", timeout=30_000)
  assert_page_shows(page, tagger, data)
  page.eval_on_selector("#character-threshold", "el => { el.value = '0.5'; el.dispatchEvent(new Event('input')); }")
  page.eval_on_selector("#general-threshold", "el => { el.value = '0.35'; el.dispatchEvent(new Event('input')); }")
  assert_page_shows(page, tagger, data)
  keep_screenshot(page, tmp_path / "serve_page.png")

  # A file that is not an image: the server's one-line message, shown as an error.
  bad = tmp_path / "notes.jpg"
  bad.write_bytes(b"not really a jpeg")
  page.set_input_files("#file", str(bad))
  page.wait_for_selector("body[data-state='error']", timeout=30_000)
  assert "not an image: notes.jpg" in page.inner_text("#status")

  phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
  small = phone.new_page()
  small.goto(server + "/")
  small.wait_for_selector("body[data-ready='1']")
  small.set_input_files("#file", str(image_path))
  small.wait_for_selector("body[data-state='tagged']", timeout=30_000)
  # Nothing wider than the screen: no sideways scrolling on a phone.
  assert small.evaluate("document.documentElement.scrollWidth") <= 390
  keep_screenshot(small, tmp_path / "serve_page_phone.png")
  assert errors == []
  phone.close()
  context.close()
