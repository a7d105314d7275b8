"""`sw-zoo serve --model BUNDLE`: tag images over HTTP (JSON API, web page, Prometheus metrics).

    sw-zoo serve --model runs/demo/bundle                       # http://127.0.0.1:8000/ in a browser
    curl -F file=@post.jpg 'http://127.0.0.1:8000/tag?general_threshold=0.3&character_threshold=0.85'
    curl --data-binary @post.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8000/tag?mcut=1'
    curl http://127.0.0.1:8000/healthz ; curl http://127.0.0.1:8000/metrics

POST /tag takes the image as the raw body or as multipart field `file` (several files: a list
back) and answers the rating, general and character tags with scores and a kohya-style caption.
Query options: threshold, general_threshold, character_threshold, mcut=1, top_k=N, tta=flip.
Concurrent requests share forward passes of up to --max-batch images; the first waits at most
--max-wait-ms for company. Uploads over --max-upload-mb are refused (413) before decoding.

Listens on 127.0.0.1 (this machine only) unless --host says otherwise; there is no
authentication, so put it behind a proxy before exposing it. Ctrl-C stops it cleanly.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys

from sw_zoo.cli import common
from sw_zoo.inference import backends  # numpy only: --help stays free of jax



def build_parser() -> argparse.ArgumentParser:
  parser = common.parser("sw-zoo serve", __doc__)
  parser.add_argument("--model", required=True, help="a model bundle directory, a run's workdir or a registered name")
  parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only; "
                      "0.0.0.0: every interface)")
  parser.add_argument("--port", type=int, default=8000, help="TCP port (8000)")
  parser.add_argument("--backend", choices=backends.BACKENDS, default="auto",
                      help="forward pass: onnxruntime or JAX (auto: onnxruntime on a CPU when installed)")
  parser.add_argument("--max-batch", type=int, default=16, help="most images in one forward pass (16)")
  parser.add_argument("--max-wait-ms", type=float, default=10.0,
                      help="how long a request waits for others to share its pass (10 ms)")
  parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body accepted (20 MB)")
  parser.add_argument("--max-megapixels", type=float, default=89.5,
                      help="largest image accepted, read from its header before decoding (89.5, Pillow's bomb limit)")
  parser.add_argument("--workers", type=int, default=None, help="threads decoding uploads (default min(4, CPUs))")
  parser.add_argument("--cache-dir", default=None, help="cache for registered names (default $SW_ZOO_CACHE or "
                      "~/.cache/sw_zoo)")
  parser.add_argument("--dtype", default=None, help="JAX compute dtype (default float32 on CPU, the model's elsewhere)")
  parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                      help="uvicorn's log level (info: one line per request)")
  return parser


def check_args(args: argparse.Namespace) -> None:
  """ValueError naming the option, before the model loads (which takes a while)."""
  if not 1 <= args.port <= 65535:
    raise ValueError(f"--port {args.port}: expected a TCP port, 1-65535")
  if args.max_batch < 1:
    raise ValueError(f"--max-batch {args.max_batch}: expected a positive number of images")
  if not args.max_wait_ms >= 0:  # NaN fails too
    raise ValueError(f"--max-wait-ms {args.max_wait_ms:g}: expected 0 or more milliseconds")
  if not 0 < args.max_upload_mb < float("inf"):
    raise ValueError(f"--max-upload-mb {args.max_upload_mb:g}: expected a positive size in MB")
  if not 0 < args.max_megapixels < float("inf"):
    raise ValueError(f"--max-megapixels {args.max_megapixels:g}: expected a positive number")
  if args.workers is not None and args.workers < 1:
    raise ValueError(f"--workers {args.workers}: expected a positive number of threads")
  if not args.host.strip():
    raise ValueError("--host is empty: expected an address such as 127.0.0.1 or 0.0.0.0")


def is_loopback(host: str) -> bool:
  if host.lower() == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:  # a host name: it may resolve to anything
    return False


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  check_args(args)
  if not is_loopback(args.host):
    print(f"sw-zoo serve: warning: listening on {args.host}, not loopback: anyone who can reach this machine "
          "can use the service (no authentication, no TLS)", file=sys.stderr)

  # Heavy imports (jax, onnxruntime, starlette) only once the arguments are known to be good.
  import numpy as np
  import uvicorn

  from sw_zoo.inference.pretrained import load_pretrained
  from sw_zoo.serve.app import create_app

  try:
    tagger = load_pretrained(args.model, cache_dir=args.cache_dir, batch_size=args.max_batch,
                             backend=args.backend, dtype=args.dtype, num_workers=args.workers)
  except RuntimeError as e:  # PretrainedNotAvailable (offline, not cached): the user's to fix
    raise FileNotFoundError(str(e)) from None
  # One pass before listening: a broken model fails here, not on the first user's request, and
  # the first request does not pay for the compile of the one-image shape.
  tagger.scores_of_batch(np.zeros((1, tagger.image_size, tagger.image_size, 3), np.uint8))
  app = create_app(tagger, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                   max_upload_mb=args.max_upload_mb, max_megapixels=args.max_megapixels, decode_workers=args.workers)
  shown_host = f"[{args.host}]" if ":" in args.host else args.host
  print(f"sw-zoo serve: {tagger.bundle.spec.name} ({len(tagger.tags)} tags, {tagger.image_size} px, "
        f"{tagger.describe_backend()}) from {tagger.bundle.path} on http://{shown_host}:{args.port}/", file=sys.stderr)
  config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
                          server_header=False)
  server = uvicorn.Server(config)
  try:
    server.run()  # returns after SIGTERM, once open requests are answered
  except KeyboardInterrupt:
    # uvicorn shuts down just as gracefully on Ctrl-C, then re-raises it; stopping the server
    # that way is the normal end, not an error.
    pass
  if not server.started:  # e.g. the port was taken; uvicorn logged why
    return 1
  print("sw-zoo serve: stopped", file=sys.stderr)
  return 0
