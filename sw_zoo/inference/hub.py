"""Hugging Face Hub names (`hf-hub:owner/repo[@revision]`) fetched once into the sw_zoo cache.

Two kinds of repo are understood, told apart by their config.json:

  * an sw_zoo bundle (config.json with format "sw_zoo.bundle", params.msgpack, selected_tags.csv
    and, when exported with --onnx, model.onnx): `load_pretrained("hf-hub:user/repo")`;
  * a timm NFNet / NF-ResNet checkpoint (config.json whose "architecture" names the timm model,
    model.safetensors), e.g. `hf-hub:timm/eca_nfnet_l0.ra2_in1k`: initial weights for training,
    `--config.init.checkpoint=hf-hub:timm/eca_nfnet_l0.ra2_in1k`.

Only the files that kind needs are downloaded (through `huggingface_hub.hf_hub_download`, which
honours HF_ENDPOINT and HF_TOKEN), all pinned to the commit the revision (default: main) named
at the first request, into

    <cache>/hf-hub/<owner>/<repo>/<revision>/    the repo's files, as in the repo
                                  .../sw_zoo_hub.json  repo, revision, commit, sha256 of each file

`<cache>` is `pretrained.default_cache_dir()` ($SW_ZOO_CACHE, else ~/.cache/sw_zoo), so nothing
goes to ~/.cache/huggingface. A download is staged beside the target and renamed into place, so
an interrupted one never looks cached. Once cached, a name is used without the network (a new
commit on the Hub is not looked for: pin `@revision`, or delete the directory to fetch again),
and every use checks each file against the sha256 recorded when it was downloaded.

Offline (SW_ZOO_OFFLINE=1 or HF_HUB_OFFLINE=1) an uncached name is a `PretrainedNotAvailable`
naming the directory to fill: copy it from a machine that fetched the name, or put the repo's
files there by hand (their sha256 is recorded on first use).

    from sw_zoo.inference import hub
    fetched = hub.fetch("hf-hub:timm/eca_nfnet_l0.ra2_in1k")   # Fetched(path, kind="timm", ...)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any

from sw_zoo.data.atomic_file import replace_dir
from sw_zoo.data.file_hash import sha256_file
from sw_zoo.inference import bundle as bundle_lib
from sw_zoo.inference import pretrained

PREFIX = "hf-hub:"
MANIFEST = "sw_zoo_hub.json"
TIMM_WEIGHTS = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_REVISION = "main"

# Hub repo ids: "name" or "owner/name" of letters, digits, '-', '_', '.', never '..' (they become
# cache paths, so nothing may climb out of the cache).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class CacheDamaged(RuntimeError):
  """A cached Hub file no longer has the sha256 recorded when it was downloaded."""


@dataclasses.dataclass(frozen=True)
class Fetched:
  name: str  # as given: "hf-hub:owner/repo@rev"
  path: str  # the cache directory holding the repo's files
  kind: str  # "bundle" | "timm"
  config: dict[str, Any]  # the repo's config.json
  commit: str | None  # the Hub commit the files came from (None: files put there by hand)

  @property
  def architecture(self) -> str | None:
    """The timm model name of a timm checkpoint repo."""
    return self.config.get("architecture") if self.kind == "timm" else None


def is_hub_name(text: str | os.PathLike) -> bool:
  return isinstance(text, str) and text.startswith(PREFIX)


def parse(name: str) -> tuple[str, str]:
  """'hf-hub:owner/repo@rev' -> ('owner/repo', 'rev'); the revision defaults to main."""
  repo_id, _, revision = name.removeprefix(PREFIX).partition("@")
  if not _REPO_ID.match(repo_id) or ".." in repo_id:
    raise ValueError(f"{name!r}: expected hf-hub:owner/repo or hf-hub:owner/repo@revision")
  if "@" in name and not revision:
    raise ValueError(f"{name!r}: empty revision after '@'")
  return repo_id, revision or DEFAULT_REVISION


def cache_path(name: str, cache_dir: str | None = None) -> str:
  """Where `name`'s files are (or would be) cached."""
  repo_id, revision = parse(name)
  # A branch like refs/pr/1 must stay one directory level.
  safe_revision = revision.replace("/", "--")
  root = os.path.abspath(os.path.expanduser(cache_dir or pretrained.default_cache_dir()))
  return os.path.join(root, "hf-hub", *repo_id.split("/"), safe_revision)


def offline_from_env() -> bool:
  """SW_ZOO_OFFLINE or HF_HUB_OFFLINE, read now (huggingface_hub reads its own at import)."""
  truthy = ("1", "true", "yes", "on")
  return any(os.environ.get(k, "").lower() in truthy for k in ("SW_ZOO_OFFLINE", "HF_HUB_OFFLINE"))


def fetch(name: str, *, cache_dir: str | None = None, offline: bool | None = None) -> Fetched:
  """`name`'s files in the cache, downloaded first if needed (see the module docstring)."""
  target = cache_path(name, cache_dir)
  if os.path.isfile(os.path.join(target, MANIFEST)):
    return _verified(name, target)
  if os.path.isfile(os.path.join(target, CONFIG_FILE)):
    return _adopt(name, target)
  if offline if offline is not None else offline_from_env():
    raise pretrained.PretrainedNotAvailable(
        f"{name} is not cached at {target} and downloads are off (SW_ZOO_OFFLINE / HF_HUB_OFFLINE); "
        f"copy that directory from a machine that has used {name}, or put the repo's files in it "
        f"(config.json + {TIMM_WEIGHTS} for timm weights; config.json, {bundle_lib.PARAMS_FILE}, "
        f"{bundle_lib.TAGS_FILE} for an sw_zoo bundle)")
  _download(name, target, cache_dir)
  return _verified(name, target)


def fetch_bundle(name: str, *, cache_dir: str | None = None, offline: bool | None = None) -> str:
  """The cached bundle directory of an sw_zoo bundle repo; a timm repo is an error saying what
  its weights are for."""
  fetched = fetch(name, cache_dir=cache_dir, offline=offline)
  if fetched.kind != "bundle":
    raise ValueError(f"{name}: holds timm {fetched.architecture} weights, not a tagger; they can start a "
                     f"training run (--config.init.checkpoint={name})")
  return fetched.path


# ---- what a repo is, and which of its files are needed -----------------------------------------


def _read_config(path: str, name: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise bundle_lib.BundleError(f"{name}: cannot read {path}: {e}") from None
  if not isinstance(config, dict):
    raise bundle_lib.BundleError(f"{name}: {path} is not a JSON object")
  return config


def _kind_and_files(config: dict[str, Any], name: str) -> tuple[str, list[str]]:
  """("bundle" | "timm", the files besides config.json to fetch); unknown repos are errors."""
  if config.get("format") == bundle_lib.FORMAT:
    files = [(config.get("params") or {}).get("file", bundle_lib.PARAMS_FILE),
             (config.get("tags") or {}).get("file", bundle_lib.TAGS_FILE)]
    if config.get("onnx"):  # written by `sw-zoo export --onnx`, beside model.onnx
      files.append(config["onnx"].get("file", bundle_lib.ONNX_FILE))
    for file in files:
      if not isinstance(file, str) or "/" in file or "\\" in file or file.startswith("."):
        raise bundle_lib.BundleError(f"{name}: config.json names file {file!r}; expected a plain file name")
    return "bundle", files
  if "architecture" in config:
    from sw_zoo.models import convert_timm  # jax: only for timm repos

    convert_timm.sw_zoo_model(config["architecture"], where=name)  # unsupported: an error before the download
    return "timm", [TIMM_WEIGHTS]
  raise bundle_lib.BundleError(
      f"{name}: config.json is neither an sw_zoo bundle's (format {bundle_lib.FORMAT!r}) nor a timm "
      "checkpoint's (an 'architecture' key)")


# ---- the cache ---------------------------------------------------------------------------------


def _verified(name: str, target: str) -> Fetched:
  """The cached repo, each file checked against the manifest's sha256."""
  manifest = _read_config(os.path.join(target, MANIFEST), name)
  for file, entry in manifest.get("files", {}).items():
    path = os.path.join(target, file)
    if not os.path.isfile(path):
      raise CacheDamaged(f"{path}: missing from the cache of {name}; delete {target} to download it again")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
      raise CacheDamaged(f"{path}: sha256 {digest} differs from {entry['sha256']} recorded when {name} was "
                         f"downloaded (a damaged or edited file); delete {target} to download it again")
  config = _read_config(os.path.join(target, CONFIG_FILE), name)
  return Fetched(name=name, path=target, kind=manifest["kind"], config=config, commit=manifest.get("commit"))


def _adopt(name: str, target: str) -> Fetched:
  """Files put into the cache directory by hand (an offline machine): checked for completeness,
  then their sha256 recorded, so later damage is caught like a download's."""
  config = _read_config(os.path.join(target, CONFIG_FILE), name)
  kind, files = _kind_and_files(config, name)
  missing = [f for f in files if not os.path.isfile(os.path.join(target, f))]
  if missing:
    raise pretrained.PretrainedNotAvailable(
        f"{name}: {target} holds config.json but not {', '.join(missing)}; put the repo's files there")
  if kind == "bundle":
    bundle_lib.read_bundle(target)
  _write_manifest(target, name, kind, commit=None, files=[CONFIG_FILE, *files])
  return _verified(name, target)


def _write_manifest(directory: str, name: str, kind: str, *, commit: str | None, files: list[str]) -> None:
  repo_id, revision = parse(name)
  manifest = {"repo": repo_id, "revision": revision, "commit": commit, "kind": kind,
              "files": {f: {"sha256": sha256_file(os.path.join(directory, f)),
                            "bytes": os.path.getsize(os.path.join(directory, f))} for f in files}}
  tmp = os.path.join(directory, f".{MANIFEST}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, os.path.join(directory, MANIFEST))


def _download(name: str, target: str, cache_dir: str | None) -> None:
  """Fetches config.json, then the files its kind needs, all at one commit, into a staging
  directory that becomes `target` only once complete and verified."""
  import huggingface_hub
  from huggingface_hub import errors as hub_errors

  repo_id, revision = parse(name)
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  # huggingface_hub reads HF_ENDPOINT once, at import; passing it keeps a later setting in force.
  endpoint = os.environ.get("HF_ENDPOINT") or None
  staging = tempfile.mkdtemp(prefix=".download.", suffix=".tmp", dir=parent)
  # Its own blob cache would be read (never written) for a local_dir download; point it inside
  # ours so ~/.cache/huggingface stays untouched.
  hub_cache = os.path.join(staging, ".hub-cache")

  def get(file: str, rev: str, **kwargs: Any) -> Any:
    return huggingface_hub.hf_hub_download(repo_id, file, revision=rev, local_dir=staging, cache_dir=hub_cache,
                                           endpoint=endpoint, library_name="sw_zoo", **kwargs)

  try:
    try:
      # A dry run first: the commit `revision` names now, so every file comes from that commit.
      commit = get(CONFIG_FILE, revision, dry_run=True).commit_hash
      config = _read_config(get(CONFIG_FILE, commit), name)
      kind, files = _kind_and_files(config, name)
      for file in files:
        get(file, commit)
    except hub_errors.LocalEntryNotFoundError as e:  # no connection, or the Hub did not answer
      raise pretrained.PretrainedNotAvailable(
          f"{name} is not cached at {target} and could not be downloaded ({e.__cause__ or e}); connect to "
          "the network (or set HF_ENDPOINT to a mirror), or copy the files there from a machine that has "
          "them") from None
    except hub_errors.RepositoryNotFoundError:
      raise FileNotFoundError(f"{name}: no such repository on the Hub (or it is private or gated: log in "
                              "with `hf auth login` or set HF_TOKEN)") from None
    except hub_errors.RevisionNotFoundError:
      raise FileNotFoundError(f"{name}: the repository has no revision {revision!r}") from None
    except hub_errors.RemoteEntryNotFoundError as e:
      raise FileNotFoundError(f"{name}: a file the repo's config.json needs is not in the repo ({e})") from None
    shutil.rmtree(os.path.join(staging, ".cache"), ignore_errors=True)  # the client's own bookkeeping
    shutil.rmtree(hub_cache, ignore_errors=True)
    if kind == "bundle":
      bundle_lib.read_bundle(staging)  # verify (params sha256, shapes, tags) before it counts as cached
    _write_manifest(staging, name, kind, commit=commit, files=[CONFIG_FILE, *files])
    if not os.path.isfile(os.path.join(target, MANIFEST)):  # another process (host) may have won the race
      replace_dir(target, lambda tmp: _move_contents(staging, tmp),
                  is_own=lambda d: os.path.isfile(os.path.join(d, MANIFEST)), what="a cached Hub repo")
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _move_contents(src: str, dst: str) -> None:
  for entry in os.listdir(src):
    os.replace(os.path.join(src, entry), os.path.join(dst, entry))
