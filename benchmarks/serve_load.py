"""Load test of `sw-zoo serve`: throughput and latency at 1, 8 and 32 concurrent clients, with
bad uploads mixed in, against `Tagger.predict` in-process on the same images (the baseline).

    python benchmarks/serve_load.py                                      # nano at 96 px, ~1-2 min
    python benchmarks/serve_load.py --model-name l0_silu_eca --image-size 320 --requests 60

A bundle of --model-name with random weights (speed does not depend on the values) and --tags
outputs is written to a temp folder, and --images JPEGs at booru-like sizes (800-1200 px on the
long side, quality 90) are made in memory. The baseline tags them with `Tagger.predict` in batches
of --max-batch in this process (decode + preprocess + forward, the same backend as the server),
before the server starts and again after it stops (the mean is the baseline: load from other jobs on a
shared machine drifts), so the two never share the CPU. Then `sw-zoo serve` runs as a
subprocess on 127.0.0.1 (a free port) and, per level, that many clients (httpx, async) send
--requests requests in all, stopping early after --max-seconds. Every 10th request is bad, in
turn: bytes that are not an image, an empty body, a body over --max-upload-mb, a truncated JPEG.
Half the requests are multipart uploads, half raw bodies.

Per level: good images tagged per second (wall clock) and its ratio to the baseline, p50 / p99
latency of the good requests, status classes (2xx / 4xx / 5xx, and connection errors), and the
mean forward-pass batch size from the server's /metrics. Exits 1 if any request got a 5xx or no
answer, a good upload was not answered 200 or a bad one not 4xx, or the server died or did not
exit cleanly on SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import io
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.random_bundle import write_random_bundle  # noqa: E402
SHAPES = ((1200, 900), (900, 1200), (1024, 1024), (1200, 800), (800, 1200), (1100, 1100))  # (h, w)
BAD_KINDS = ("not_image", "empty", "oversized", "truncated")


# ---- Inputs ------------------------------------------------------------------------------------

def booru_jpegs(count: int, *, seed: int = 0, shapes=SHAPES, quality: int = 90) -> list[bytes]:
  """JPEGs that look like drawings to the encoder: colour gradients, flat rectangles, some grain."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    h, w = shapes[i % len(shapes)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    slope = rng.uniform(-0.15, 0.15, (2, 3)).astype(np.float32)
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    for _ in range(6):
      y0, x0 = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
      image[y0:y0 + int(rng.integers(40, h // 2)), x0:x0 + int(rng.integers(40, w // 2))] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    out.append(buffer.getvalue())
  return out


def bad_uploads(limit_bytes: int, sample_jpeg: bytes, *, seed: int = 0) -> dict[str, bytes]:
  """One body per bad kind; the server must answer each with a 4xx."""
  rng = np.random.default_rng(seed)
  return {
      "not_image": b"%PDF-1.4 not an image " + rng.bytes(4096),
      "empty": b"",
      # Past the limit by 1 MB: large enough to be refused, small enough to keep the run quick.
      "oversized": sample_jpeg + rng.bytes(limit_bytes + (1 << 20) - len(sample_jpeg)),
      "truncated": sample_jpeg[:len(sample_jpeg) // 3],
  }


# ---- One level of load ---------------------------------------------------------------------------

@dataclasses.dataclass
class LevelResult:
  clients: int
  seconds: float = 0.0
  sent: int = 0
  good_ok: int = 0
  statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # '2xx' / '4xx' / '5xx' / 'error'
  latencies: list[float] = dataclasses.field(default_factory=list)  # seconds, good requests answered 200
  unexpected: list[str] = dataclasses.field(default_factory=list)  # what went wrong, one line each

  @property
  def throughput(self) -> float:
    return self.good_ok / self.seconds if self.seconds > 0 else 0.0

  def percentile(self, q: float) -> float:
    return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


async def _send(client: httpx.AsyncClient, body: bytes, multipart: bool, name: str) -> httpx.Response:
  if multipart:
    return await client.post("/tag", files={"file": (name, body, "image/jpeg")})
  return await client.post("/tag", content=body, headers={"content-type": "image/jpeg"})


async def run_level(url: str, *, clients: int, requests: int, good: list[bytes], bad: dict[str, bytes],
                    max_seconds: float, bad_every: int = 10, timeout: float = 120.0) -> LevelResult:
  """`clients` concurrent clients send `requests` requests in all (every `bad_every`-th one bad),
  stopping early once `max_seconds` have passed."""
  result = LevelResult(clients)
  counter = itertools.count()
  bad_kinds = itertools.cycle(sorted(bad))
  deadline = time.monotonic() + max_seconds

  async def client_loop(client: httpx.AsyncClient):
    while time.monotonic() < deadline:
      i = next(counter)
      if i >= requests:
        return
      is_bad = i % bad_every == bad_every - 1
      kind = next(bad_kinds) if is_bad else "good"
      body = bad[kind] if is_bad else good[i % len(good)]
      started = time.perf_counter()
      result.sent += 1
      try:
        response = await _send(client, body, multipart=i % 2 == 0, name=f"{kind}_{i}.jpg")
      except httpx.HTTPError as e:
        result.statuses["error"] += 1
        result.unexpected.append(f"request {i} ({kind}): no answer: {type(e).__name__}: {e}")
        continue
      elapsed = time.perf_counter() - started
      result.statuses[f"{response.status_code // 100}xx"] += 1
      if not is_bad and response.status_code == 200:
        result.good_ok += 1
        result.latencies.append(elapsed)
      elif is_bad and 400 <= response.status_code < 500:
        pass
      else:
        result.unexpected.append(f"request {i} ({kind}): HTTP {response.status_code}: {response.text[:200]}")

  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    result.seconds = time.perf_counter() - started
  return result


# ---- The server subprocess ---------------------------------------------------------------------

def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(bundle: str, port: int, *options: str, log_path: str | None = None,
                 timeout: float = 180.0) -> subprocess.Popen:
  """`sw-zoo serve` on 127.0.0.1:port, returned once /healthz answers; RuntimeError (with the
  server's output) if it exits or does not come up in time."""
  log = open(log_path, "wb") if log_path else subprocess.DEVNULL
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)  # a server process needs one device, not the tests' 8
  proc = subprocess.Popen([sys.executable, "-m", "sw_zoo.cli", "serve", "--model", bundle, "--port", str(port),
                           "--log-level", "warning", *options], cwd=ROOT, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      break
    try:
      if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
        return proc
    except httpx.HTTPError:
      pass
    time.sleep(0.2)
  stop_server(proc)
  output = open(log_path, encoding="utf-8", errors="replace").read()[-3000:] if log_path else ""
  raise RuntimeError(f"sw-zoo serve did not come up on port {port} (exit code {proc.returncode}):\n{output}")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
  """SIGINT (Ctrl-C), as a user stops it; the exit code (killed after `timeout`: -9)."""
  if proc.poll() is None:
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      return -9
  return proc.returncode


def batch_stats(url: str) -> tuple[float, float]:
  """(sum, count) of the server's batch-size histogram."""
  text = httpx.get(f"{url}/metrics", timeout=10).text
  value = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
  return value("sw_zoo_serve_batch_size_sum"), value("sw_zoo_serve_batch_size_count")


# ---- The benchmark -------------------------------------------------------------------------------

class Baseline:
  """`Tagger.predict` in-process on the encoded images, batches of `batch_size` (decode included)."""

  def __init__(self, bundle: str, images: list[bytes], *, backend: str, batch_size: int):
    from sw_zoo.inference.pretrained import load_pretrained

    self.tagger = load_pretrained(bundle, backend=backend, batch_size=batch_size)
    self.images = images
    self.tagger.predict(images[:batch_size])  # compile / warm up

  def measure(self, rounds: int) -> float:
    """Images/s, the median of `rounds`."""
    rates = []
    for _ in range(rounds):
      started = time.perf_counter()
      self.tagger.predict(self.images)
      rates.append(len(self.images) / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.partition("\n\n")[2])
  parser.add_argument("--model-name", default="nano", help="model variant (nano; l0_silu_eca for a real size)")
  parser.add_argument("--image-size", type=int, default=96)
  parser.add_argument("--tags", type=int, default=2000, help="outputs of the random model (2000)")
  parser.add_argument("--backend", default="auto", choices=("auto", "jax", "onnx"))
  parser.add_argument("--levels", default="1,8,32", help="concurrent clients per level (1,8,32)")
  parser.add_argument("--requests", type=int, default=200, help="requests per level, ~10%% bad (200)")
  parser.add_argument("--max-seconds", type=float, default=90.0, help="stop a level after this long (90)")
  parser.add_argument("--images", type=int, default=24, help="distinct good JPEGs (24)")
  parser.add_argument("--max-batch", type=int, default=16)
  parser.add_argument("--max-wait-ms", type=float, default=10.0)
  parser.add_argument("--max-upload-mb", type=float, default=4.0, help="the server's limit; oversized bodies exceed it by 1 MB")
  parser.add_argument("--baseline-rounds", type=int, default=3)
  args = parser.parse_args(argv)
  levels = [int(x) for x in args.levels.split(",") if x.strip()]

  work = tempfile.mkdtemp(prefix="sw_zoo_serve_load_")
  print(f"Writing a random-weight {args.model_name} bundle ({args.tags} tags, {args.image_size} px) and "
        f"{args.images} JPEGs...", flush=True)
  bundle = write_random_bundle(os.path.join(work, "bundle"), args.model_name, args.image_size, args.tags)
  good = booru_jpegs(args.images)
  limit = int(args.max_upload_mb * 2**20)
  bad = bad_uploads(limit, good[0])
  print(f"  mean JPEG {np.mean([len(g) for g in good]) / 1024:.0f} KB; bad kinds: {', '.join(sorted(bad))}", flush=True)

  reference = Baseline(bundle, good * max(1, 64 // len(good)), backend=args.backend, batch_size=args.max_batch)
  backend = reference.tagger.backend
  baseline_before = reference.measure(args.baseline_rounds)
  print(f"Baseline: Tagger.predict in-process ({backend}, batches of {args.max_batch}, decode included): "
        f"{baseline_before:.1f} img/s", flush=True)

  port = free_port()
  log_path = os.path.join(work, "server.log")
  proc = start_server(bundle, port, "--backend", backend, "--max-batch", str(args.max_batch),
                      "--max-wait-ms", str(args.max_wait_ms), "--max-upload-mb", str(args.max_upload_mb),
                      log_path=log_path)
  url = f"http://127.0.0.1:{port}"
  failures: list[str] = []
  rows = []
  try:
    for clients in levels:
      before = batch_stats(url)
      level = asyncio.run(run_level(url, clients=clients, requests=args.requests, good=good, bad=bad,
                                    max_seconds=args.max_seconds))
      after = batch_stats(url)
      passes = after[1] - before[1]
      mean_batch = (after[0] - before[0]) / passes if passes else float("nan")
      alive = proc.poll() is None
      rows.append((level, mean_batch))
      print(f"  {clients:>3} clients: {level.sent} requests in {level.seconds:.1f} s, "
            f"{level.throughput:.1f} good img/s", flush=True)
      failures += level.unexpected
      if not alive:
        failures.append(f"the server died during the {clients}-client level (exit code {proc.returncode})")
        break
  finally:
    code = stop_server(proc)
  if code != 0:
    failures.append(f"the server exited with code {code} on SIGINT (log: {log_path})")
  # Measured again once the server is gone: on a shared machine the load from other jobs drifts,
  # and the mean of before and after is fairer to compare with the levels run in between.
  baseline_after = reference.measure(args.baseline_rounds)
  baseline = (baseline_before + baseline_after) / 2
  print(f"Baseline again: {baseline_after:.1f} img/s; mean {baseline:.1f} img/s", flush=True)

  print(f"\nsw-zoo serve load test: {args.model_name} @ {args.image_size} px, {args.tags} tags, backend {backend}, "
        f"--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g}; baseline {baseline:.1f} img/s")
  header = f"{'clients':>7} {'requests':>8} {'good img/s':>10} {'x baseline':>10} {'p50 ms':>8} {'p99 ms':>8} " \
           f"{'2xx':>5} {'4xx':>5} {'5xx':>5} {'no answer':>9} {'mean batch':>10}"
  print(header)
  for level, mean_batch in rows:
    s = level.statuses
    print(f"{level.clients:>7} {level.sent:>8} {level.throughput:>10.1f} {level.throughput / baseline:>10.2f} "
          f"{1000 * level.percentile(50):>8.1f} {1000 * level.percentile(99):>8.1f} {s['2xx']:>5} {s['4xx']:>5} "
          f"{s['5xx']:>5} {s['error']:>9} {mean_batch:>10.2f}")
  total_5xx = sum(level.statuses["5xx"] for level, _ in rows)
  print(f"5xx responses: {total_5xx}; server exit code on SIGINT: {code}")
  if failures:
    print(f"\nFAILED ({len(failures)} problems; bundle and server log kept in {work}):", *failures[:20], sep="\n  ")
    return 1
  shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
