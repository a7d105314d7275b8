"""The `sw-zoo serve` ASGI app: a Starlette app around one loaded Tagger.

    from sw_zoo.serve.app import create_app
    app = create_app(sw_zoo.load_pretrained("runs/demo/bundle"), max_batch=16, max_wait_ms=10)
    # uvicorn.run(app, host="127.0.0.1", port=8000)   (what `sw-zoo serve` does)

Endpoints:
  POST /tag      an image as the raw request body (image/* or application/octet-stream), or
                 multipart/form-data with one or more `file` fields; answers one JSON object per
                 image (a list when several files were sent). Query options: threshold (every
                 category), general_threshold, character_threshold, mcut=1, top_k=N, tta=flip.
  GET  /healthz  {"status": "ok", "model", "tags", "image_size", "backend", ...}
  GET  /metrics  Prometheus text format (sw_zoo/serve/metrics.py)
  GET  /         a page to drop an image on and read its tags (page.html)

Bad input is the client's: every such request gets a 4xx with {"error": "one line"} and nothing
else happens; the upload limit is enforced while the body streams in, before anything is
decoded. Decoding and preprocessing run on a thread pool, the forward pass in the batcher's own
thread (batcher.py), so the event loop only moves bytes and keeps accepting while a pass runs.
A failure on the server's side (a forward pass that raises) answers 500 for the requests it
touched, and the next request is served normally.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import io
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from sw_zoo.data import image_io
from sw_zoo.data.preprocess import box_to_source
from sw_zoo.inference import captions
from sw_zoo.serve.batcher import Batcher
from sw_zoo.serve.metrics import ServeMetrics

log = logging.getLogger("sw_zoo.serve")

ENDPOINTS = ("/", "/tag", "/healthz", "/metrics")
TTA_CHOICES = ("none", "flip")
# Pillow's own decompression-bomb warning size: ~270 MB decoded, per decode thread.
DEFAULT_MAX_PIXELS = 89_478_485
MAX_FILES = 256  # files in one multipart request (each still counts toward the upload limit)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_RAW_TYPES = ("application/octet-stream",)  # plus image/* and no content type at all


class ClientError(Exception):
  """Bad input: answered with `status` and {"error": message}."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


class _UploadTooLarge(Exception):
  """Raised from inside the body stream, so the multipart parser stops reading too."""


@dataclasses.dataclass(frozen=True)
class TagOptions:
  thresholds: dict[str, float] | None
  mcut: bool
  top_k: int | None
  tta: str | None


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": message}, status_code=status)


def _probability(name: str, text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not 0.0 <= value <= 1.0:  # NaN fails too
    raise ClientError(400, f"query parameter {name}={text!r}: expected a number between 0 and 1")
  return value


def parse_options(query: Any, tagger: Any) -> TagOptions:
  """TagOptions from /tag's query parameters; ClientError(400) naming the parameter when bad."""
  known = ("threshold", "general_threshold", "character_threshold", "mcut", "top_k", "tta")
  for name in query.keys():
    if name not in known:
      raise ClientError(400, f"unknown query parameter {name!r}; known: {', '.join(known)}")
  thresholds: dict[str, float] = {}
  if "threshold" in query:
    value = _probability("threshold", query["threshold"])
    thresholds = {"default": value, "general": value, "character": value}
  for category in ("general", "character"):
    name = f"{category}_threshold"
    if name in query:
      thresholds[category] = _probability(name, query[name])
  mcut_text = query.get("mcut", "0").strip().lower()
  if mcut_text not in _TRUE + _FALSE:
    raise ClientError(400, f"query parameter mcut={query['mcut']!r}: expected 1 or 0")
  top_k = None
  if "top_k" in query:
    text = query["top_k"]
    if not text.strip().isdigit() or int(text) < 1:
      raise ClientError(400, f"query parameter top_k={text!r}: expected a positive whole number")
    top_k = int(text)
  tta = query.get("tta", "none").strip().lower() or "none"
  if tta not in TTA_CHOICES:
    raise ClientError(400, f"query parameter tta={query['tta']!r}: expected one of {', '.join(TTA_CHOICES)}")
  try:
    tagger.thresholds_for(thresholds or None)
  except (TypeError, ValueError) as e:
    raise ClientError(400, f"thresholds: {e}") from None
  return TagOptions(thresholds or None, mcut_text in _TRUE, top_k, None if tta == "none" else tta)


def _megabytes(n: int) -> str:
  return f"{n / 2**20:.3g} MB"


def _limited(request: Request, limit: int) -> Request:
  """The request with a body stream that raises _UploadTooLarge past `limit` bytes, so nothing
  past the limit is ever buffered (a chunked upload has no Content-Length to check up front)."""
  receive = request.receive
  seen = 0

  async def limited_receive():
    nonlocal seen
    message = await receive()
    if message["type"] == "http.request":
      seen += len(message.get("body", b""))
      if seen > limit:
        raise _UploadTooLarge()
    return message

  return Request(request.scope, limited_receive)


async def read_uploads(request: Request, limit: int) -> tuple[list[tuple[str, bytes]], bool]:
  """([(name, bytes)], multipart?) of a /tag request; ClientError for a body that cannot hold
  an image (too large, empty, wrong content type, missing `file` field, malformed form)."""
  too_large = ClientError(413, f"upload too large: the limit is {_megabytes(limit)} per request (--max-upload-mb)")
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise ClientError(413, f"upload too large: {_megabytes(int(declared))}; the limit is {_megabytes(limit)} "
                           "per request (--max-upload-mb)")
  content_type = request.headers.get("content-type", "")
  media_type = content_type.split(";")[0].strip().lower()
  request = _limited(request, limit)
  try:
    if media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
      try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
      except (MultiPartException, HTTPException) as e:  # Starlette reports some as HTTPException(400)
        raise ClientError(400, f"malformed multipart body: {getattr(e, 'detail', None) or e}") from None
      try:
        fields = form.getlist("file")
        if not fields:
          present = ", ".join(repr(k) for k in dict.fromkeys(form.keys())) or "none"
          raise ClientError(400, f"missing form field 'file' (fields sent: {present}); send the image as "
                                 "multipart/form-data field 'file'")
        uploads = []
        for i, field in enumerate(fields):
          if not isinstance(field, UploadFile):
            raise ClientError(400, f"form field 'file' #{i + 1} is text, not a file upload")
          uploads.append((field.filename or f"file #{i + 1}", await field.read()))
        return uploads, True
      finally:
        await form.close()
    if media_type and not media_type.startswith("image/") and media_type not in _RAW_TYPES:
      raise ClientError(415, f"unsupported content type {media_type!r}: send multipart/form-data with a 'file' "
                             "field, or the image bytes as image/* or application/octet-stream")
    return [("the request body", await request.body())], False
  except _UploadTooLarge:
    raise too_large from None


def _not_an_image(name: str, error: Exception) -> str:
  detail = str(error)
  if detail.startswith("image bytes: "):  # image_io names the source; here the name is the upload's
    detail = detail[len("image bytes: "):]
  if detail.startswith("UnidentifiedImageError"):  # Pillow's text names an internal BytesIO object
    detail = "not in an image format this server reads (JPEG, PNG, WebP, GIF, BMP, ...)"
  return f"not an image: {name}: {detail}"


class _Observe:
  """Pure ASGI middleware: counts every HTTP request by endpoint and status, with its latency
  (an exception escaping the app counts as the 500 the server answers)."""

  def __init__(self, app, metrics: ServeMetrics):
    self.app = app
    self.metrics = metrics

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    started = time.perf_counter()
    status = 500
    endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"  # bounded label values

    async def observed_send(message):
      nonlocal status
      if message["type"] == "http.response.start":
        status = message["status"]
      await send(message)

    try:
      await self.app(scope, receive, observed_send)
    finally:
      self.metrics.observe_request(endpoint, status, time.perf_counter() - started)


class TaggingService:
  """What the endpoints share: the tagger, the batcher, the decode pool and the metrics."""

  def __init__(self, tagger: Any, *, max_batch: int = 16, max_wait_ms: float = 10.0,
               max_upload_bytes: int = 20 << 20, max_pixels: int = DEFAULT_MAX_PIXELS,
               decode_workers: int | None = None, backend: str | None = None):
    if max_upload_bytes < 1:
      raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    if max_pixels < 1:
      raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    self.tagger = tagger
    self.max_upload_bytes = int(max_upload_bytes)
    self.max_pixels = int(max_pixels)
    self.backend = backend or getattr(tagger, "backend", None) or "jax"
    self.metrics = ServeMetrics(queue_depth=lambda: self.batcher.queue_depth)
    self.batcher = Batcher(self._forward, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0,
                           on_pass=lambda n, tta, seconds: self.metrics.observe_pass(n, seconds))
    self.pool = ThreadPoolExecutor(decode_workers or min(4, os.cpu_count() or 1), thread_name_prefix="sw_zoo-serve-decode")
    self.caption_style = captions.CaptionStyle()
    self.has_box = bool(getattr(tagger, "has_box", False))
    self.page = importlib.resources.files("sw_zoo.serve").joinpath("page.html").read_text(encoding="utf-8")

  def _prepare(self, data: bytes) -> np.ndarray | tuple[np.ndarray, tuple[int, int]]:
    """The model input for one upload, after checking its pixel count from the header alone: a
    small, highly compressed file (a flat PNG) can decode to gigabytes, and the byte limit does
    not see that."""
    try:
      with Image.open(io.BytesIO(data)) as header:
        width, height = header.size
    except Exception:  # not an image at all: preprocess reports it in the usual words
      width = height = 0
    if width * height > self.max_pixels:
      raise ClientError(413, f"image of {width}x{height} = {width * height / 1e6:.0f} megapixels is over the "
                             f"limit of {self.max_pixels / 1e6:.0f} (--max-megapixels)")
    if self.has_box:  # (input, decoded (height, width)): the box goes back in the upload's own frame
      return self.tagger.prepare(data)
    return self.tagger.preprocess(data)

  def _forward(self, images: np.ndarray, *, tta: str | None) -> np.ndarray:
    # Looked up on every pass (not bound once) so a test can wrap the tagger's method.
    if not self.has_box:
      return self.tagger.scores_of_batch(images, tta=tta)
    # Scores and box side by side in one row, so the batcher splits them per request unchanged.
    scores, boxes = self.tagger.outputs_of_batch(images, tta=tta)
    return np.concatenate([scores, boxes], axis=1)

  @property
  def model_name(self) -> str:
    return self.tagger.bundle.spec.name

  def health(self) -> dict[str, Any]:
    return {"status": "ok", "model": self.model_name, "tags": len(self.tagger.tags),
            "image_size": self.tagger.image_size, "backend": self.backend,
            "precision": getattr(getattr(self.tagger, "forward", None), "precision", "fp32"),
            "bundle": str(self.tagger.bundle.path),
            "thresholds": self.tagger.thresholds_for(None), "max_batch": self.batcher.max_batch,
            "max_upload_bytes": self.max_upload_bytes}

  def result(self, scores: np.ndarray, options: TagOptions, size: tuple[int, int] | None = None) -> dict[str, Any]:
    box = None
    if self.has_box:
      scores, box = scores[:-4], scores[-4:]
    prediction = self.tagger.decide(scores, thresholds=options.thresholds, mcut=options.mcut, top_k=options.top_k)
    if box is not None and size is not None:
      prediction.box = tuple(float(v) for v in box_to_source(box, *size))
    out = prediction.to_json()
    out["caption"] = self.caption_style.separator.join(captions.caption_tags(prediction, self.caption_style))
    out["model"] = self.model_name
    out["image_size"] = self.tagger.image_size
    return out

  async def tag(self, request: Request) -> Response:
    try:
      options = parse_options(request.query_params, self.tagger)
      uploads, multipart = await read_uploads(request, self.max_upload_bytes)
      for name, data in uploads:
        if not data:
          raise ClientError(400, "empty body: send the image bytes, or multipart/form-data with a 'file' field"
                            if not multipart else f"empty upload: {name} (0 bytes)")
      loop = asyncio.get_running_loop()
      decoded = await asyncio.gather(*(loop.run_in_executor(self.pool, self._prepare, data)
                                       for _, data in uploads), return_exceptions=True)
      for (name, _), image in zip(uploads, decoded):
        if isinstance(image, ClientError):
          raise ClientError(image.status, f"{name}: {image.message}" if multipart else image.message)
        if isinstance(image, image_io.ImageError):
          raise ClientError(415, _not_an_image(name, image))
        if isinstance(image, ValueError):  # decoded, but not usable as a picture (e.g. no pixels)
          raise ClientError(400, f"cannot use image {name}: {image}")
        if isinstance(image, BaseException):
          raise image
    except ClientError as e:
      return _error(e.status, e.message)
    sizes = [None] * len(decoded)
    if self.has_box:
      decoded, sizes = zip(*decoded)
    try:
      scores = await self.batcher.submit(list(decoded), tta=options.tta)
    except Exception as e:  # the server's fault, not the client's: 500, and keep serving
      self.metrics.forward_errors.inc()
      log.exception("forward pass failed")
      return _error(500, f"internal error in the forward pass: {type(e).__name__}: {e}")
    results = await loop.run_in_executor(
        self.pool, lambda: [self.result(row, options, size) for row, size in zip(scores, sizes)])
    self.metrics.images.inc(len(results))
    if multipart:
      for (name, _), result in zip(uploads, results):
        result["file"] = name
    return JSONResponse(results if len(results) > 1 else results[0])

  async def close(self) -> None:
    await self.batcher.close()
    self.pool.shutdown(wait=False, cancel_futures=True)


def create_app(tagger: Any, *, max_batch: int = 16, max_wait_ms: float = 10.0, max_upload_mb: float = 20.0,
               max_megapixels: float = DEFAULT_MAX_PIXELS / 1e6, decode_workers: int | None = None,
               backend: str | None = None) -> Starlette:
  """The Starlette app serving `tagger` (see the module docstring). `backend` is only reported
  by /healthz (default: the tagger's `backend` attribute, else "jax")."""
  if max_upload_mb <= 0:
    raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
  service = TaggingService(tagger, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=int(max_megapixels * 1e6),
                           decode_workers=decode_workers, backend=backend)

  async def page(request: Request) -> Response:
    return HTMLResponse(service.page)

  async def healthz(request: Request) -> Response:
    return JSONResponse(service.health())

  async def metrics(request: Request) -> Response:
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)

  async def http_error(request: Request, exc: HTTPException) -> Response:
    return _error(exc.status_code, exc.detail if exc.status_code != 405 else
                  f"method {request.method} not allowed on {request.url.path}")

  async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")

  @contextlib.asynccontextmanager
  async def lifespan(app: Starlette):
    service.batcher.start()
    try:
      yield
    finally:
      await service.close()

  app = Starlette(
      routes=[Route("/", page, methods=["GET"]), Route("/tag", service.tag, methods=["POST"]),
              Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])],
      middleware=[Middleware(_Observe, metrics=service.metrics)],
      exception_handlers={HTTPException: http_error, Exception: internal_error},
      lifespan=lifespan)
  app.state.service = service
  return app
