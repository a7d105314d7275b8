"""`load_pretrained(name_or_path)`: a Tagger from a bundle directory, a registered name, or a
bundle on the Hugging Face Hub (`hf-hub:owner/repo[@revision]`, cached as `sw_zoo.inference.hub`
describes, with the same offline rules).

A registered name resolves through `REGISTRY` (name -> archive URL + sha256) into a local cache:

    <cache>/<name>/<sha256[:16]>/      the unpacked bundle (content-addressed: a registry entry
                                       with new weights gets a new directory)

The cache is `cache_dir`, else $SW_ZOO_CACHE, else ~/.cache/sw_zoo. The archive (.tar.gz, .tar
or .zip of a bundle directory, at its top level or inside one folder) is downloaded with urllib
to a temp file, checked against the sha256, unpacked into a temp directory, verified as a
bundle, and renamed into place, so an interrupted download never looks cached. Once cached,
loading needs no network; with SW_ZOO_OFFLINE=1 (or offline=True) nothing is downloaded and an
uncached name is an error naming the name, the URL and the cache path.

sw_zoo ships no weights, so the registry starts empty. To publish a tagger:

    sw-zoo export runs/l2 --out l2_bundle          # or use runs/l2/bundle
    tar -czf l2_silu_eca-v1.tar.gz -C l2_bundle .  # upload it somewhere
    sha256sum l2_silu_eca-v1.tar.gz

and add `"l2_silu_eca-v1": {"url": "https://...", "sha256": "..."}` to REGISTRY below, or call
`register(name, url, sha256)` in your own code before `load_pretrained(name)`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Any

from sw_zoo import storage
from sw_zoo.inference import bundle as bundle_lib

REGISTRY: dict[str, dict[str, Any]] = {}

_CHUNK = 1 << 20


class PretrainedNotAvailable(RuntimeError):
  """A registered name is not cached and cannot be downloaded now."""


def register(name: str, url: str, sha256: str, **info: Any) -> None:
  """Adds (or replaces) a registry entry. `info` (description, license, ...) is kept as given."""
  if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
    raise ValueError(f"register({name!r}): sha256 must be 64 hex digits, got {sha256!r}")
  REGISTRY[name] = {"url": url, "sha256": sha256.lower(), **info}


def default_cache_dir() -> str:
  return os.path.expanduser(os.environ.get("SW_ZOO_CACHE") or os.path.join("~", ".cache", "sw_zoo"))


def _offline_from_env() -> bool:
  return os.environ.get("SW_ZOO_OFFLINE", "").lower() in ("1", "true", "yes")


def _looks_like_path(text: str) -> bool:
  return os.sep in text or (os.altsep or os.sep) in text or text.startswith((".", "~"))


def resolve(name_or_path: str | os.PathLike, *, cache_dir: str | None = None, offline: bool | None = None) -> str:
  """The local bundle directory for a path (a bundle, or a run's workdir holding `bundle/`), a
  registered name or an `hf-hub:` name (downloading it if needed)."""
  text = os.fspath(name_or_path)
  if text.startswith("hf-hub:"):
    from sw_zoo.inference import hub  # hub builds on this module's cache and errors

    return hub.fetch_bundle(text, cache_dir=cache_dir, offline=offline)
  if storage.is_remote(text):
    return _resolve_remote(text.rstrip("/"))
  local = os.path.abspath(os.path.expanduser(text))
  if os.path.isdir(local):
    # A training run's workdir stands for the bundle the trainer wrote into it.
    run_bundle = os.path.join(local, "bundle")
    if not bundle_lib.is_bundle(local) and bundle_lib.is_bundle(run_bundle):
      return run_bundle
    return local
  if text not in REGISTRY:
    if _looks_like_path(text):
      raise FileNotFoundError(f"{local}: no such bundle directory")
    known = ", ".join(sorted(REGISTRY)) or "none registered (see sw_zoo/pretrained.py)"
    raise FileNotFoundError(f"{text!r} is neither a bundle directory nor a registered name; known names: {known}")
  entry = REGISTRY[text]
  target = os.path.join(os.path.abspath(cache_dir or default_cache_dir()), text, entry["sha256"][:16])
  if bundle_lib.is_bundle(target):
    return target
  if offline if offline is not None else _offline_from_env():
    raise PretrainedNotAvailable(
        f"{text!r} is not cached at {target} and downloads are off (offline mode); fetch "
        f"{entry['url']} on a connected machine with load_pretrained({text!r}) and copy the cache "
        "directory over, or pass the path of an unpacked bundle instead")
  _download_into(text, entry, target)
  return target


def _resolve_remote(url: str) -> str:
  """A gs:// bundle (or a run's workdir holding bundle/) mirrored locally, each file verified."""
  storage.check_bucket(url)
  for candidate in (url, storage.join(url, "bundle")):
    if bundle_lib.is_bundle(candidate):
      return storage.pull(candidate, exact=True)
  raise FileNotFoundError(f"{url}: no bundle there (no config.json with format {bundle_lib.FORMAT!r}, "
                          "nor a run's bundle/)")


def _fetch(url: str, dest_dir: str) -> tuple[str, str]:
  """Downloads `url` into a temp file in `dest_dir`; returns (path, sha256 hex)."""
  digest = hashlib.sha256()
  fd, path = tempfile.mkstemp(prefix=".download.", suffix=".tmp", dir=dest_dir)
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
      for block in iter(lambda: response.read(_CHUNK), b""):
        digest.update(block)
        out.write(block)
  except BaseException:
    os.remove(path)
    raise
  return path, digest.hexdigest()


def _unpack(archive: str, dest: str, what: str) -> None:
  """Unpacks a .tar(.gz/.bz2/.xz) or .zip into `dest`, refusing members that would land outside."""
  if tarfile.is_tarfile(archive):
    try:
      with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")  # "data": no absolute paths, links out, devices
    except tarfile.TarError as e:  # e.g. a member escaping the bundle, or a damaged archive
      raise bundle_lib.BundleError(f"{what}: refused to unpack the archive: {e}") from None
    return
  if zipfile.is_zipfile(archive):
    root = os.path.realpath(dest)
    with zipfile.ZipFile(archive) as zf:
      for member in zf.namelist():
        if not os.path.realpath(os.path.join(dest, member)).startswith(root + os.sep):
          raise bundle_lib.BundleError(f"{what}: archive member {member!r} would be written outside the bundle")
      zf.extractall(dest)
    return
  raise bundle_lib.BundleError(f"{what}: not a tar or zip archive")


def _bundle_root(directory: str, what: str) -> str:
  """The bundle inside an unpacked archive: the directory itself or its single sub-directory."""
  if bundle_lib.is_bundle(directory):
    return directory
  entries = [e for e in os.listdir(directory) if not e.startswith(".")]
  if len(entries) == 1 and bundle_lib.is_bundle(os.path.join(directory, entries[0])):
    return os.path.join(directory, entries[0])
  raise bundle_lib.BundleError(f"{what}: the archive holds no bundle (config.json with format "
                               f"{bundle_lib.FORMAT!r}) at its top level or in one folder")


def _download_into(name: str, entry: dict[str, Any], target: str) -> None:
  url = entry["url"]
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  what = f"{name!r} ({url})"
  try:
    archive, digest = _fetch(url, parent)
  except (urllib.error.URLError, OSError, ValueError) as e:
    raise PretrainedNotAvailable(
        f"{name!r} is not cached at {target} and could not be downloaded from {url}: {e}. Connect "
        "to the network, or download the archive elsewhere, unpack it and pass its directory") from e
  try:
    if digest != entry["sha256"]:
      raise bundle_lib.BundleError(f"{what}: downloaded file has sha256 {digest}, the registry says "
                                   f"{entry['sha256']}; nothing was cached (damaged download, or the "
                                   "file at the URL changed)")
    unpacked = tempfile.mkdtemp(prefix=".unpack.", suffix=".tmp", dir=parent)
    try:
      _unpack(archive, unpacked, what)
      root = _bundle_root(unpacked, what)
      bundle_lib.read_bundle(root)  # verify before it counts as cached
      bundle_lib.replace_dir(target, lambda tmp: _move_contents(root, tmp), is_own=bundle_lib.is_bundle,
                             what="a cached bundle")
    finally:
      shutil.rmtree(unpacked, ignore_errors=True)
  finally:
    os.remove(archive)


def _move_contents(src: str, dst: str) -> None:
  for entry in os.listdir(src):
    os.replace(os.path.join(src, entry), os.path.join(dst, entry))


def load_pretrained(name_or_path: str | os.PathLike, *, cache_dir: str | None = None, offline: bool | None = None,
                    backend: str = "auto", **tagger_options: Any):
  """A `Tagger` for a bundle directory or a registered name (see the module docstring).

  `backend`: 'auto' (the faster one available here: onnxruntime when JAX runs on the CPU and it
  is installed, else JAX), 'jax' or 'onnx'. `tagger_options` go to `Tagger` (batch_size, dtype,
  num_workers, device).
  """
  from sw_zoo.inference.tagger import Tagger  # jax is imported only when a model is actually loaded

  path = resolve(name_or_path, cache_dir=cache_dir, offline=offline)
  return Tagger(bundle_lib.read_bundle(path), backend=backend, **tagger_options)
