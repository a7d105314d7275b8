"""`sw-zoo serve`: /tag answers what `Tagger.predict` says (raw body, multipart, several files,
every query option), every kind of bad input gets a one-line 4xx, /healthz and /metrics,
concurrent requests really share forward passes (never mixing TTA settings), a failing forward
pass is a 500 that the server survives, and the real CLI over real HTTP, under a mixed load, shut
down with Ctrl-C."""
import ast
import asyncio
import collections
import io
import re
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import sw_zoo
from benchmarks import serve_load
from sw_zoo import cli
from sw_zoo.cli import serve as serve_cli
from sw_zoo.inference import captions
from sw_zoo.serve.app import create_app
from tests.test_tagger import make_bundle, sample_images

UPLOAD_MB = 0.25


def png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
  return make_bundle(tmp_path_factory.mktemp("serve") / "bundle")


@pytest.fixture(scope="module")
def tagger(bundle_dir):
  return sw_zoo.load_pretrained(bundle_dir, batch_size=4, backend="onnx")  # no compile per batch shape: fast tests


@pytest.fixture(scope="module")
def images():
  return [png(i) for i in sample_images(6, seed=3)]


@pytest.fixture
def client(tagger):
  app = create_app(tagger, max_batch=4, max_wait_ms=2, max_upload_mb=UPLOAD_MB, decode_workers=2)
  with TestClient(app, raise_server_exceptions=False) as test_client:  # `with`: runs the lifespan
    yield test_client


def expected_json(tagger, data: bytes, **options):
  prediction = tagger.predict(data, **options)
  return prediction, {"rating": dict(sorted(prediction.rating.items(), key=lambda kv: -kv[1])),
                      "general": dict(prediction.general), "character": dict(prediction.character)}


def assert_matches(got: dict, tagger, data: bytes, **options):
  prediction, want = expected_json(tagger, data, **options)
  for category in ("rating", "general", "character"):
    assert list(got[category]) == list(want[category]), category  # same tags, same order
    np.testing.assert_allclose(list(got[category].values()), list(want[category].values()), atol=2e-6)
  assert got["caption"] == ", ".join(captions.caption_tags(prediction, captions.CaptionStyle()))
  assert got["model"] == "nano" and got["image_size"] == tagger.image_size


def assert_same(a: dict, b: dict):
  """Two answers for one image; scores may differ in the last digits (another batch shape)."""
  assert a.keys() == b.keys() and a["caption"] == b["caption"]
  for category in ("rating", "general", "character"):
    assert list(a[category]) == list(b[category])
    np.testing.assert_allclose(list(a[category].values()), list(b[category].values()), atol=2e-6)


# ---- /tag answers ----------------------------------------------------------------------------

def test_raw_body_and_multipart_match_predict(client, tagger, images):
  raw = client.post("/tag", content=images[0], headers={"content-type": "image/png"})
  assert raw.status_code == 200, raw.text
  assert_matches(raw.json(), tagger, images[0])
  octet = client.post("/tag", content=images[0], headers={"content-type": "application/octet-stream"})
  assert octet.json() == raw.json()
  one = client.post("/tag", files={"file": ("a.png", images[0], "image/png")})
  assert one.status_code == 200 and one.json() == {**raw.json(), "file": "a.png"}
  two = client.post("/tag", files=[("file", ("a.png", images[0], "image/png")),
                                   ("file", ("b.jpg", jpeg(sample_images(1, seed=9)[0]), "image/jpeg"))])
  assert two.status_code == 200
  body = two.json()
  assert isinstance(body, list) and [r["file"] for r in body] == ["a.png", "b.jpg"]
  assert_same(body[0], one.json())
  assert_matches(body[1], tagger, jpeg(sample_images(1, seed=9)[0]))


@pytest.mark.parametrize("query, options", [
    ("general_threshold=0.3&character_threshold=0.7", {"thresholds": {"general": 0.3, "character": 0.7}}),
    ("threshold=0.2", {"thresholds": 0.2}),
    ("threshold=0.2&general_threshold=0.6", {"thresholds": {"default": 0.2, "general": 0.6, "character": 0.2}}),
    ("mcut=1", {"mcut": True}),
    ("threshold=0&top_k=2", {"thresholds": 0.0, "top_k": 2}),
    ("tta=flip&threshold=0.1", {"tta": "flip", "thresholds": 0.1}),
])
def test_query_options_match_predict(client, tagger, images, query, options):
  for data in images[1:3]:
    response = client.post(f"/tag?{query}", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert_matches(response.json(), tagger, data, **options)


# ---- Bad input: always a one-line 4xx ----------------------------------------------------------

def _oversized():
  return b"\xff\xd8" + np.random.default_rng(0).bytes(int(UPLOAD_MB * 2**20) + 1000)


def _chunks(data: bytes, size: int = 16384):
  # A generator body goes out chunked, with no Content-Length: the limit is found while streaming.
  for start in range(0, len(data), size):
    yield data[start:start + size]


BAD_REQUESTS = {
    "non-image raw": (dict(content=b"%PDF-1.4 hello", headers={"content-type": "application/octet-stream"}),
                      415, "not an image: the request body: "),
    "non-image file": (dict(files={"file": ("notes.txt", b"just some text", "text/plain")}), 415,
                       "not an image: notes.txt"),
    "truncated jpeg": (dict(files={"file": ("cut.jpg", jpeg(sample_images(1)[0])[:200], "image/jpeg")}), 415,
                       "not an image: cut.jpg"),
    "empty raw": (dict(content=b"", headers={"content-type": "image/png"}), 400, "empty body"),
    "empty file": (dict(files={"file": ("zero.png", b"", "image/png")}), 400, "empty upload: zero.png"),
    "missing file field": (dict(files={"image": ("a.png", b"x", "image/png")}), 400, "missing form field 'file'"),
    "text field": (dict(data={"file": "not a file"}), 400, "is text, not a file upload"),
    "oversized raw": (dict(content=_oversized(), headers={"content-type": "image/jpeg"}), 413, "upload too large"),
    "oversized file": (dict(files={"file": ("big.jpg", _oversized(), "image/jpeg")}), 413, "upload too large"),
    "oversized chunked": (dict(content=_chunks(_oversized()), headers={"content-type": "image/jpeg"}), 413,
                          "upload too large"),
    "wrong content type": (dict(content=b"{}", headers={"content-type": "application/json"}), 415,
                           "unsupported content type 'application/json'"),
    "malformed multipart": (dict(content=b"--xx\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=xx"}),
                            400, "multipart"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_uploads_get_one_line_4xx(client, name):
  kwargs, status, message = BAD_REQUESTS[name]
  response = client.post("/tag", **kwargs)
  assert response.status_code == status, response.text
  body = response.json()
  assert list(body) == ["error"] and message in body["error"] and "\n" not in body["error"], body


def test_images_over_the_pixel_limit_are_refused_before_decoding(tagger, monkeypatch):
  app = create_app(tagger, max_megapixels=0.001)  # 1000 pixels
  decoded = []
  monkeypatch.setattr(tagger, "preprocess", lambda data: decoded.append(data))
  buffer = io.BytesIO()
  Image.new("RGB", (40, 40), "white").save(buffer, "PNG")  # 1600 pixels in a few hundred bytes
  with TestClient(app, raise_server_exceptions=False) as c:
    response = c.post("/tag", content=buffer.getvalue(), headers={"content-type": "image/png"})
    multi = c.post("/tag", files={"file": ("flat.png", buffer.getvalue(), "image/png")})
  assert response.status_code == 413 and "40x40" in response.json()["error"] and "--max-megapixels" in response.json()["error"]
  assert multi.status_code == 413 and multi.json()["error"].startswith("flat.png: image of 40x40")
  assert not decoded


@pytest.mark.parametrize("query, parameter", [
    ("general_threshold=abc", "general_threshold='abc'"), ("threshold=1.5", "threshold='1.5'"),
    ("character_threshold=nan", "character_threshold='nan'"), ("top_k=0", "top_k='0'"),
    ("top_k=two", "top_k='two'"), ("tta=rotate", "tta='rotate'"), ("mcut=maybe", "mcut='maybe'"),
    ("treshold=0.3", "unknown query parameter 'treshold'"),
])
def test_bad_query_values_name_the_parameter(client, images, query, parameter):
  response = client.post(f"/tag?{query}", content=images[0], headers={"content-type": "image/png"})
  assert response.status_code == 400
  assert parameter in response.json()["error"]


def test_unknown_routes_and_methods_answer_json(client):
  assert client.get("/tag").status_code == 405 and "not allowed" in client.get("/tag").json()["error"]
  missing = client.get("/nope")
  assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


# ---- /healthz, /metrics, the page ---------------------------------------------------------------

def test_healthz_metrics_and_page(client, tagger, images):
  health = client.get("/healthz").json()
  assert health["status"] == "ok" and health["model"] == "nano" and health["backend"] == "onnx"
  assert health["tags"] == len(tagger.tags) and health["image_size"] == tagger.image_size and health["precision"] == "fp32"
  assert health["thresholds"] == {"rating": 0.5, "general": 0.5, "character": 0.5}
  client.post("/tag", content=images[0], headers={"content-type": "image/png"})
  client.post("/tag", files=[("file", ("a.png", images[0])), ("file", ("b.png", images[1]))])
  client.post("/tag", content=b"", headers={"content-type": "image/png"})
  response = client.get("/metrics")
  assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
  text = response.text
  metric = lambda pattern: float(re.search("^" + pattern + r" (\S+)$", text, re.M).group(1))  # noqa: E731
  assert metric(r'sw_zoo_serve_requests_total\{endpoint="/tag",status="200"\}') == 2
  assert metric(r'sw_zoo_serve_requests_total\{endpoint="/tag",status="400"\}') == 1
  assert metric(r'sw_zoo_serve_requests_total\{endpoint="/healthz",status="200"\}') == 1
  assert metric(r"sw_zoo_serve_images_tagged_total") == 3
  assert metric(r"sw_zoo_serve_batch_size_sum") == 3
  assert metric(r'sw_zoo_serve_request_seconds_count\{endpoint="/tag"\}') == 3
  assert metric(r"sw_zoo_serve_queue_depth") == 0
  page = client.get("/")
  assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
  assert 'id="file"' in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN


# ---- Batching ------------------------------------------------------------------------------------

def test_concurrent_requests_share_forward_passes(tagger, images, monkeypatch):
  passes = []
  original = tagger.scores_of_batch

  def recording(batch, *, tta=None):
    passes.append((len(batch), tta))
    return original(batch, tta=tta)

  monkeypatch.setattr(tagger, "scores_of_batch", recording)
  # A long window: the batch closes when it is full, so 8 concurrent images make exactly 2 passes.
  app = create_app(tagger, max_batch=4, max_wait_ms=3000, decode_workers=2)
  flip = [i % 2 == 1 for i in range(8)]

  async def run():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
      same = await asyncio.gather(*(client.post("/tag", content=images[i % 4], headers={"content-type": "image/png"})
                                    for i in range(8)))
      same_passes = list(passes)
      mixed = await asyncio.gather(*(client.post("/tag" + ("?tta=flip" if f else ""), content=images[i % 4],
                                                 headers={"content-type": "image/png"}) for i, f in enumerate(flip)))
      metrics = (await client.get("/metrics")).text
    await app.state.service.close()
    return same, same_passes, mixed, metrics

  same, same_passes, mixed, metrics = asyncio.run(run())
  assert same_passes == [(4, None), (4, None)]
  # TTA settings never share a pass (each pass has one setting; the scores below show it is the
  # right one): a window of 4 images holding both settings becomes one pass per setting.
  images_by_tta = collections.Counter()
  for size, tta in passes[2:]:
    images_by_tta[tta] += size
  assert images_by_tta == {None: 4, "flip": 4} and len(passes) - 2 <= 4
  for i, response in enumerate(same):
    assert_matches(response.json(), tagger, images[i % 4])
  for i, response in enumerate(mixed):
    assert_matches(response.json(), tagger, images[i % 4], tta="flip" if flip[i] else None)
  assert f"sw_zoo_serve_batch_size_count {len(passes)}.0" in metrics and "sw_zoo_serve_batch_size_sum 16.0" in metrics


def test_a_failing_forward_pass_is_a_500_and_the_server_goes_on(client, tagger, images, monkeypatch):
  original = tagger.scores_of_batch
  calls = []

  def flaky(batch, *, tta=None):
    calls.append(len(batch))
    if len(calls) == 1:
      raise RuntimeError("device lost")
    return original(batch, tta=tta)

  monkeypatch.setattr(tagger, "scores_of_batch", flaky)
  failed = client.post("/tag", content=images[0], headers={"content-type": "image/png"})
  assert failed.status_code == 500
  assert failed.json() == {"error": "internal error in the forward pass: RuntimeError: device lost"}
  ok = client.post("/tag", content=images[0], headers={"content-type": "image/png"})
  assert ok.status_code == 200
  assert_matches(ok.json(), tagger, images[0])
  assert "sw_zoo_serve_forward_errors_total 1.0" in client.get("/metrics").text


# ---- The CLI ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port 70000"), (["--max-batch", "0"], "--max-batch 0"),
    (["--max-upload-mb", "-1"], "--max-upload-mb -1"), (["--max-wait-ms", "-5"], "--max-wait-ms -5"),
    (["--workers", "0"], "--workers 0"),
])
def test_cli_checks_arguments_before_loading(args, message, capsys):
  # A model path that does not exist: reaching the model load would fail with a different error.
  assert cli.main(["serve", "--model", "/nonexistent/bundle", *args]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("sw-zoo serve: error: " + message) and "\n" not in err


def test_cli_warns_when_not_on_loopback(capsys):
  assert cli.main(["serve", "--model", "/nonexistent/bundle", "--host", "0.0.0.0"]) == 2
  err = capsys.readouterr().err
  assert "warning: listening on 0.0.0.0, not loopback" in err and "no such bundle directory" in err


def test_cli_help_and_loopback_check(capsys):
  with pytest.raises(SystemExit):
    cli.main(["serve", "--help"])
  out = capsys.readouterr().out
  assert "sw-zoo serve --model runs/demo/bundle" in out and "--max-batch" in out
  assert all(serve_cli.is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
  assert not any(serve_cli.is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))
  # `sw-zoo serve --help` loads neither the server nor the model's libraries.
  code = ("import sys\nfrom sw_zoo.cli import commands\ntry: commands.main(['serve', '--help'])\n"
          "except SystemExit: pass\nprint(sorted({m.split('.')[0] for m in sys.modules}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert "sw-zoo serve" in out
  loaded = set(ast.literal_eval(out.splitlines()[-1]))
  assert not {"jax", "starlette", "uvicorn", "onnxruntime", "prometheus_client"} & loaded


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
  """`sw-zoo serve` as a subprocess on a free loopback port; at the end, Ctrl-C must exit it cleanly."""
  port = serve_load.free_port()
  log = tmp_path_factory.mktemp("serve_cli") / "server.log"
  proc = serve_load.start_server(bundle_dir, port, "--backend", "onnx", "--max-batch", "4",
                                 "--max-upload-mb", str(UPLOAD_MB), "--workers", "2", log_path=str(log),
                                 timeout=90)
  yield f"http://127.0.0.1:{port}", proc
  code = serve_load.stop_server(proc, timeout=20)
  assert code == 0, log.read_text()


def test_cli_serves_over_http(server, tagger, images):
  url, _ = server
  health = httpx.get(f"{url}/healthz").json()
  assert health["model"] == "nano" and health["backend"] == "onnx"
  response = httpx.post(f"{url}/tag?general_threshold=0.3", files={"file": ("a.png", images[0], "image/png")})
  assert response.status_code == 200
  assert_matches(response.json(), tagger, images[0], thresholds={"general": 0.3})


def test_cli_under_mixed_load(server):
  """8 clients x 40 requests, every 10th bad (not an image, empty, over the limit, truncated)."""
  url, proc = server
  good = [jpeg(i) for i in sample_images(8, seed=5)]
  bad = serve_load.bad_uploads(int(UPLOAD_MB * 2**20), good[0])
  result = asyncio.run(serve_load.run_level(url, clients=8, requests=320, good=good, bad=bad, max_seconds=60))
  assert result.unexpected == []  # every good upload 200, every bad one 4xx, no connection errors
  assert result.sent == 320 and result.statuses["5xx"] == 0
  assert result.good_ok == 288 and result.statuses["4xx"] == 32
  assert proc.poll() is None and httpx.get(f"{url}/healthz").status_code == 200
  sums = serve_load.batch_stats(url)
  assert sums[0] / sums[1] > 1.0  # concurrent clients shared passes
