"""Prometheus metrics of one `sw-zoo serve` app, in a registry of its own.

    metrics = ServeMetrics()
    metrics.observe_request("/tag", 200, 0.031)
    metrics.observe_pass(images=8, seconds=0.12)
    text, content_type = metrics.render()         # GET /metrics

A registry per app (not prometheus_client's global one) so that several apps in one process
(tests, or two models served side by side) never share or double-register counters.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Batch sizes are small integers; powers of two match the padded shapes the Tagger compiles.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
  """Requests by endpoint and status, images tagged, pass sizes and times, request latency, and
  the queue depth (read from `queue_depth` whenever /metrics is scraped)."""

  def __init__(self, queue_depth: Callable[[], float] | None = None, prefix: str = "sw_zoo_serve"):
    self.registry = CollectorRegistry(auto_describe=True)
    r = self.registry
    self.requests = Counter(f"{prefix}_requests", "HTTP requests by endpoint and status code",
                            ["endpoint", "status"], registry=r)
    self.latency = Histogram(f"{prefix}_request_seconds", "Request latency (first byte in to response sent)",
                             ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
    self.images = Counter(f"{prefix}_images_tagged", "Images tagged (returned in a 200 response)", registry=r)
    self.batch_size = Histogram(f"{prefix}_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r)
    self.pass_seconds = Histogram(f"{prefix}_forward_seconds", "Duration of one forward pass",
                                  buckets=LATENCY_BUCKETS, registry=r)
    self.forward_errors = Counter(f"{prefix}_forward_errors", "Forward passes that raised", registry=r)
    self.queue_depth = Gauge(f"{prefix}_queue_depth", "Images waiting for a forward pass", registry=r)
    if queue_depth is not None:
      self.queue_depth.set_function(queue_depth)

  def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
    self.requests.labels(endpoint=endpoint, status=str(status)).inc()
    self.latency.labels(endpoint=endpoint).observe(seconds)

  def observe_pass(self, images: int, seconds: float) -> None:
    self.batch_size.observe(images)
    self.pass_seconds.observe(seconds)

  def render(self) -> tuple[bytes, str]:
    """(body, content type) in the Prometheus text exposition format."""
    return generate_latest(self.registry), CONTENT_TYPE_LATEST
