"""Files behind URLs (gs://bucket/key, or any fsspec protocol) and their local mirror.

Cloud object stores have no rename and no append, and the readers that matter most here (the
array_record reader under grain, tarfile, PIL, onnxruntime) only open local paths: measured,
`ArrayRecordReader('gs://...')` neither opens nor fails within 20 s. So sw_zoo works on local
files and moves whole files across the boundary, in one place:

  * `pull(url)` copies a file or a tree into the mirror (`<cache>/mirror/<scheme>/<bucket>/<key>`),
    each file verified against the store's size and MD5 (CRC32C when no MD5) before it is renamed
    into place; a sidecar remembers the object's generation, so a second pull costs one listing.
  * `push(local, url, last=...)` uploads the files that differ, the completion markers last
    (`dataset.json`, a bundle's `config.json`), so a reader never sees a marker before its data.
    One object upload is atomic in GCS, so every file appears whole or not at all.
  * `write_text` / `read_text` / `exists` / `isdir` / `listdir` for small files and decisions.

Local paths pass through unchanged everywhere, so callers need no branches of their own.
Credentials and endpoints are the clients' own settings: gcsfs and google-auth read Application
Default Credentials; an emulator is reached with STORAGE_EMULATOR_HOST (gcsfs) and
TENSORSTORE_GCS_HTTP_URL (Orbax's array writer).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_CHUNK = 1 << 22
SIDECAR_SUFFIX = ".remote.json"  # suffix of the per-file record of what was pulled


def is_remote(path: str | os.PathLike) -> bool:
  text = os.fspath(path)
  return "://" in text and not text.startswith("file://")


def join(base: str, *parts: str) -> str:
  """os.path.join for local paths, '/'-joining for URLs (never a backslash in a key)."""
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def _fs(url: str):
  import fsspec

  try:
    return fsspec.core.url_to_fs(url)
  except (ImportError, ValueError) as e:
    raise OSError(f"{url}: cannot open this URL ({e}); gs:// needs the gcsfs package") from None


class StorageError(OSError):
  """A store could not be reached or refused a request; the message names the URL."""


def _describe(url: str, err: BaseException) -> BaseException:
  """One clear error for `url`: missing things stay FileNotFoundError, the rest StorageError."""
  if isinstance(err, FileNotFoundError):
    text = str(err)
    if "bucket" in text.lower() or not text or text == url:
      return FileNotFoundError(f"{url}: not found (does the bucket exist, and may these credentials read it?)")
    return FileNotFoundError(f"{url}: not found")
  first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
  return StorageError(f"{url}: the storage service failed ({type(err).__name__}: {first}); "
                      "check the network, credentials and STORAGE_EMULATOR_HOST if you use an emulator")


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
  try:
    yield
  except StorageError:
    raise
  except Exception as e:  # gcsfs, aiohttp and google-auth errors share no useful base class
    raise _describe(url, e) from e


def _ask(path: str, local: Callable[[str], Any], remote: str) -> Any:
  """`local(path)` for a local path, else the fsspec method `remote` on the URL's key."""
  if not is_remote(path):
    return local(path)
  fs, key = _fs(path)
  with _errors(path):
    return getattr(fs, remote)(key)


def exists(path: str) -> bool:
  return _ask(path, os.path.exists, "exists")


def isfile(path: str) -> bool:
  return _ask(path, os.path.isfile, "isfile")


def isdir(path: str) -> bool:
  return _ask(path, os.path.isdir, "isdir")


def check_bucket(url: str) -> None:
  """FileNotFoundError naming the URL when its bucket does not exist (before anything is written)."""
  if not is_remote(url):
    return
  fs, key = _fs(url)
  bucket = key.split("/", 1)[0]
  try:
    with _errors(url):
      found = fs.exists(bucket)
  except FileNotFoundError:
    found = False
  if not found:
    raise FileNotFoundError(f"{url}: bucket {bucket!r} does not exist (or these credentials cannot see it)")


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  fs, key = _fs(path)
  with _errors(path):
    return fs.cat_file(key)


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
  """Replaces `path` whole: temp file + rename locally, one object upload remotely."""
  if not is_remote(path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise
    return
  fs, key = _fs(path)
  with _errors(path):
    fs.pipe_file(key, data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------- the mirror

def cache_root() -> str:
  return os.path.expanduser(os.environ.get("SW_ZOO_CACHE") or os.path.join("~", ".cache", "sw_zoo"))


def mirror_root() -> str:
  return os.path.join(cache_root(), "mirror")


def mirror_path(url: str) -> str:
  """Where `url` lives on this machine: `<cache>/mirror/<scheme>/<bucket>/<key>`."""
  if not is_remote(url):
    return os.path.abspath(os.path.expanduser(url))
  scheme, rest = url.split("://", 1)
  parts = [p for p in rest.split("/") if p]
  if any(p in (".", "..") for p in parts):
    raise ValueError(f"{url}: '.' and '..' are not allowed in a URL sw_zoo mirrors")
  return os.path.join(mirror_root(), scheme, *parts)


def url_of(local: str) -> str | None:
  """The URL whose mirror `local` is (inverse of `mirror_path`), or None outside the mirror."""
  rel = os.path.relpath(os.path.abspath(local), mirror_root())
  parts = rel.split(os.sep)
  if rel.startswith("..") or len(parts) < 2:
    return None
  return f"{parts[0]}://" + "/".join(parts[1:])


def _expected_digest(info: dict[str, Any]) -> tuple[str, str] | None:
  """('md5' | 'crc32c', base64 digest) from an object listing, preferring MD5 (composite
  objects have only CRC32C)."""
  if info.get("md5Hash"):
    return "md5", info["md5Hash"]
  if info.get("crc32c"):
    return "crc32c", info["crc32c"]
  return None


def _digest_file(path: str, kind: str) -> str:
  """Base64 MD5 or CRC32C of a file, the encoding object listings use."""
  if kind == "md5":
    h = hashlib.md5()
  else:
    import google_crc32c  # a gcsfs dependency

    h = google_crc32c.Checksum()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      h.update(block)
  return base64.b64encode(h.digest()).decode()


def _identity(info: dict[str, Any]) -> dict[str, Any]:
  """What says an object is unchanged: size, and its generation or etag (any fsspec store)."""
  return {"size": int(info.get("size") or 0),
          "version": str(info.get("generation") or info.get("etag") or info.get("ETag") or "")}


def _sidecar(local: str) -> str:
  return os.path.join(os.path.dirname(local), "." + os.path.basename(local) + SIDECAR_SUFFIX)


def _is_current(local: str, info: dict[str, Any]) -> bool:
  try:
    with open(_sidecar(local), encoding="utf-8") as f:
      recorded = json.load(f)
    return recorded == _identity(info) and os.path.getsize(local) == recorded["size"]
  except (OSError, ValueError, KeyError):
    return False


def _download(fs, key: str, url: str, info: dict[str, Any], local: str) -> None:
  """Downloads one object to a temp file beside `local`, verifies it, then renames it in."""
  directory = os.path.dirname(local)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(local)}.", suffix=".part", dir=directory)
  os.close(fd)
  try:
    with _errors(url):
      fs.get_file(key, tmp)
    size = os.path.getsize(tmp)
    if size != int(info.get("size") or 0):
      raise StorageError(f"{url}: downloaded {size} bytes but the store lists {info.get('size')}")
    expected = _expected_digest(info)
    if expected and _digest_file(tmp, expected[0]) != expected[1]:
      raise StorageError(f"{url}: the downloaded copy fails its {expected[0]} check (corrupted in transit?)")
    os.replace(tmp, local)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _remember(local, info)


def _remember(local: str, info: dict[str, Any]) -> None:
  """Records which object version `local` is a copy of (see `_is_current`)."""
  with open(_sidecar(local), "w", encoding="utf-8") as f:
    json.dump(_identity(info), f)


def _listing(fs, key: str, url: str) -> dict[str, dict[str, Any]]:
  """{relative path: object info} of every object under `key` (a prefix), or of `key` itself."""
  with _errors(url):
    found = fs.find(key, detail=True, withdirs=False)
  prefix = key.rstrip("/") + "/"
  out = {}
  for name, info in found.items():
    if info.get("type") == "directory":
      continue
    if name == key.rstrip("/"):
      out[""] = info
    elif name.startswith(prefix):
      out[name[len(prefix):]] = info
  return out


def remote_files(url: str) -> dict[str, dict[str, Any]]:
  """{relative path: {'size', ...}} of the objects under `url` ('' for `url` itself)."""
  fs, key = _fs(url)
  return _listing(fs, key, url)


def pull(url: str, *, only: Callable[[str], bool] | None = None, exact: bool = False,
         listing: dict[str, dict[str, Any]] | None = None, progress: Callable[[int], None] | None = None) -> str:
  """The local copy of `url` (a file or a tree), brought up to date; returns its local path.

  `only(relative_path)` limits a tree pull to some files. `exact` also removes local files of the
  mirror that the store no longer has (so the mirror is the store's state, for a command that
  will write and push back). Local paths are returned as they are.
  """
  if not is_remote(url):
    return url
  fs, key = _fs(url)
  local_root = mirror_path(url)
  files = _listing(fs, key, url) if listing is None else listing
  if not files and not exact:
    raise FileNotFoundError(f"{url}: not found")
  for rel, info in files.items():
    if only is not None and rel and not only(rel):
      continue
    local = os.path.join(local_root, *rel.split("/")) if rel else local_root
    if not _is_current(local, info):
      _download(fs, key.rstrip("/") + ("/" + rel if rel else ""), join(url, rel) if rel else url, info, local)
    if progress:
      progress(int(info.get("size") or 0))
  if exact and os.path.isdir(local_root):
    keep = set(files)
    for rel in _local_files(local_root):
      if rel not in keep:
        os.remove(os.path.join(local_root, rel))
        with contextlib.suppress(OSError):
          os.remove(_sidecar(os.path.join(local_root, rel)))
  return local_root


def _local_files(root: str) -> list[str]:
  """Relative '/'-paths of the files under `root`, without the mirror's sidecars and temp files."""
  out = []
  for directory, _, names in os.walk(root):
    for name in names:
      if name.endswith((SIDECAR_SUFFIX, ".part", ".tmp")):
        continue
      out.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
  return sorted(out)


def push(local_root: str, url: str, *, last: Iterable[str] = (), delete: Callable[[str], bool] | None = None) -> int:
  """Uploads the files under `local_root` that the store lacks or holds differently; returns the
  number uploaded. Files named in `last` (relative paths) go after all others: they are the
  markers readers trust. `delete(relative_path)` says which store objects with no local file
  may be removed (only this command's own kinds of files; None removes nothing)."""
  if not is_remote(url):
    raise ValueError(f"push needs a URL, got {url!r}")
  fs, key = _fs(url)
  remote = _listing(fs, key, url)
  last = [p for p in last]
  local = [p for p in _local_files(local_root) if p not in last]
  local += [p for p in last if os.path.isfile(os.path.join(local_root, p))]
  stale = sorted(rel for rel in set(remote) - set(local) if rel and delete is not None and delete(rel))
  changed = [rel for rel in local if not _same(os.path.join(local_root, *rel.split("/")), remote.get(rel))]
  if stale or changed:
    # A marker must never stand beside data it does not describe: drop the old ones first.
    for rel in last:
      if rel in remote and rel not in stale:
        stale.insert(0, rel)
  for rel in stale:
    with _errors(join(url, rel)):
      fs.rm_file(key.rstrip("/") + "/" + rel)
  uploaded = 0
  for rel in local:
    path, target = os.path.join(local_root, *rel.split("/")), key.rstrip("/") + "/" + rel
    if rel not in changed and not (rel in last and rel in stale):
      _remember(path, remote[rel])  # already there: a later pull must not download it again
      continue
    with _errors(join(url, rel)):
      fs.put_file(path, target)
      _remember(path, fs.info(target))
    uploaded += 1
  with contextlib.suppress(Exception):
    fs.invalidate_cache(key)
  return uploaded


def _same(path: str, info: dict[str, Any] | None) -> bool:
  if info is None or int(info.get("size") or -1) != os.path.getsize(path):
    return False
  expected = _expected_digest(info)
  return expected is not None and _digest_file(path, expected[0]) == expected[1]


def upload_tree(local_dir: str, dest: str) -> None:
  """Copies a local tree to `dest`, a local directory or a URL (existing files are replaced)."""
  if is_remote(dest):
    push(local_dir, dest)
    return
  shutil.copytree(local_dir, dest, dirs_exist_ok=True)


@contextlib.contextmanager
def output_dir(path: str, *, last: Iterable[str] = (), owned: Callable[[str], bool] | None = None,
               push_on_error: bool = False) -> Iterator[str]:
  """A local directory to write `path`'s output into: `path` itself when local; for a URL, its
  mirror (first made exactly the store's state, so ownership checks and resumes see what is
  there), pushed back when the block succeeds (or also when it fails, with `push_on_error`, for
  work that resumes from what it finished). `owned(relative_path)`: store files the command may
  delete when its local output no longer has them."""
  if not is_remote(path):
    yield path
    return
  check_bucket(path)
  local = pull(path, exact=True)
  os.makedirs(local, exist_ok=True)
  try:
    yield local
  except BaseException:
    if push_on_error:
      push(local, path, last=(), delete=None)
    raise
  push(local, path, last=last, delete=owned)
