"""What `sw-zoo tag` writes besides kohya-style captions: hydrus sidecars, per-image JSON, one
JSON/JSONL results file for the whole folder, and the tag-frequency summary.

Sidecar formats (`--format`), each file beside its image:
  txt     `<stem><ext>`: the caption, tags joined by the separator (kohya, WD tools)
  hydrus  `<image name><ext>` (img.jpg.txt): one tag per line, as hydrus's sidecar importer reads
          them: spaces for underscores, `character:` / `series:` (copyright) / `creator:` (artist) /
          `meta:` namespaces, the most likely rating as `rating:<name>`
  json    `<stem>.json`: the image's scores (`image_record`)
  none    no sidecar (with --output_path: the results file only)

`ResultsFile` (`--output_path FILE.json|.jsonl`) streams one record per image into a temp file
beside FILE and renames it over FILE only when the run finishes: an interrupted run leaves the
previous FILE (or none), never half a file. `.jsonl` holds one record per line; `.json` one object
{"model": ..., "images": {path: record}} keyed by the path relative to the tagged folder.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Any

from sw_zoo import progress
from sw_zoo.data.atomic_file import atomic_write_text, temp_path_beside
from sw_zoo.inference import captions

if TYPE_CHECKING:
  from sw_zoo.inference.tagger import Prediction

FORMATS = ("txt", "hydrus", "json", "none")
RESULT_SUFFIXES = (".json", ".jsonl")
# Category -> hydrus namespace (hydrus's own names; general tags have none).
HYDRUS_NAMESPACES = {"character": "character", "copyright": "series", "artist": "creator", "meta": "meta"}


def hydrus_lines(prediction: Prediction, style: captions.CaptionStyle) -> list[str]:
  """A hydrus sidecar's tags: every kept tag once, namespaced by category, with the caption rules
  for undesired tags, replacements and --character_tag_expand (the series part goes to `series:`).
  Hydrus tags use spaces, so underscores always become spaces."""
  plain = dataclasses.replace(style, remove_underscore=True)
  undesired = {captions.tag_key(t) for t in style.undesired}
  lines = []
  for category, pairs in [("general", prediction.general), ("character", prediction.character),
                          *prediction.other.items()]:
    namespace = HYDRUS_NAMESPACES.get(category, None if category == "general" else category)
    for name, _ in pairs:
      if captions.tag_key(name) in undesired:
        continue
      parts = captions.shown_names(name, plain, character=category == "character")
      spaces = [namespace] + [HYDRUS_NAMESPACES["copyright"]] * (len(parts) - 1)
      lines += [f"{ns}:{part}" if ns else part for ns, part in zip(spaces, parts)]
  if prediction.rating_tag is not None and captions.tag_key(prediction.rating_tag) not in undesired:
    lines.append(f"rating:{captions.display_name(prediction.rating_tag, True)}")
  return list(dict.fromkeys(lines))


def image_record(path: str, prediction: Prediction, caption: list[str]) -> dict[str, Any]:
  """One image's entry in a results file / JSON sidecar: scores per category and the caption."""
  return {"path": path, **prediction.to_json(), "caption": caption}


def check_results_path(path: str, *, force: bool = False) -> str:
  """The absolute results path, or ValueError/FileExistsError naming it before any work: the suffix
  must be .json or .jsonl, its folder must exist, and an existing file is replaced only with force."""
  path = os.path.abspath(os.path.expanduser(path))
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in RESULT_SUFFIXES:
    raise ValueError(f"--output_path {path}: expected a .json or .jsonl file name")
  folder = os.path.dirname(path)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--output_path {path}: folder {folder} does not exist")
  if os.path.isdir(path):
    raise IsADirectoryError(f"--output_path {path} is a directory")
  if os.path.exists(path) and not force:
    raise FileExistsError(f"--output_path {path} exists; pass --force to replace it (it is replaced only "
                          "once the new results are complete)")
  if not os.access(folder, os.W_OK):
    raise PermissionError(f"--output_path {path}: folder {folder} is not writable")
  return path


class ResultsFile:
  """Streams image records to `path` (.json or .jsonl) via a temp file; `commit` renames it into
  place, `abort` (or an exception inside `with`) removes it and leaves `path` as it was."""

  def __init__(self, path: str, *, model: dict[str, Any], root: str):
    self.path = path
    self.root = root
    self.jsonl = path.lower().endswith(".jsonl")
    self.count = 0
    self._tmp = temp_path_beside(path)
    self._file = open(self._tmp, "w", encoding="utf-8", newline="\n")
    if not self.jsonl:
      self._file.write('{"model": ' + json.dumps(model, ensure_ascii=False) + ', "images": {')

  def add(self, image_path: str, prediction: Prediction, caption: list[str]) -> None:
    rel = os.path.relpath(image_path, self.root).replace(os.sep, "/")
    record = image_record(rel, prediction, caption)
    if self.jsonl:
      self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
      del record["path"]
      self._file.write(("," if self.count else "") + "\n" + json.dumps(rel, ensure_ascii=False) + ": "
                       + json.dumps(record, ensure_ascii=False))
    self.count += 1

  def commit(self) -> None:
    if not self.jsonl:
      self._file.write("\n}}\n")
    self._file.flush()
    os.fsync(self._file.fileno())
    self._file.close()
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    if not self._file.closed:
      self._file.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  def __enter__(self) -> "ResultsFile":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.commit()
    else:
      self.abort()


def frequency_lines(counts: collections.Counter, total_images: int, *, top: int | None = 20) -> list[str]:
  """'  1girl  42 (84.0%)' per tag, most frequent first (`top` of them, or all)."""
  if not counts:
    return []
  rows = counts.most_common(top)
  width = max(len(tag) for tag, _ in rows)
  return [f"  {tag:<{width}}  {n:>6} ({100.0 * n / max(total_images, 1):5.1f}%)" for tag, n in rows]


def tag_files(tagger: Any, files: list[str], style: captions.CaptionStyle, *, thresholds: Any = None,
              mcut: bool = False, extension: str = ".txt", append: bool = False, fmt: str = "txt",
              tta: str | None = None, results: ResultsFile | None = None,
              show_progress: bool = True) -> dict[str, Any]:
  """Tags `files` with `tagger`, writing a `fmt` sidecar beside each image and a record into
  `results`; returns {'tagged': n, 'skipped': [(path, message)], 'seconds': s, 'frequency':
  Counter of written tags}. Unreadable images, sidecars that cannot be written and (in append
  mode) existing ones that are not UTF-8 are listed, never fatal. Targets that would lose data
  fail first (`captions.check_caption_targets`), before any image is decoded or file written."""
  if fmt not in FORMATS:
    raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
  if fmt == "json":
    extension = ".json"
  if fmt != "none":
    extension = captions.check_caption_targets(files, extension, fmt=fmt)
  skipped: list[tuple[str, str]] = []
  frequency: collections.Counter = collections.Counter()
  tagged = 0
  start = time.perf_counter()
  with progress.bar(len(files), unit="img", enabled=show_progress) as bar:
    for result in tagger.iter_predict(files, thresholds=thresholds, mcut=mcut, skip_errors=True, tta=tta):
      bar.update(1)
      if result.error is not None:
        skipped.append((result.source, str(result.error)))
        continue
      entries = captions.caption_entries(result.prediction, style)
      tags = [captions.render_tag(t, s, style) for t, s in entries]
      try:
        if fmt == "json":
          record = image_record(os.path.basename(result.source), result.prediction, tags)
          atomic_write_text(captions.caption_path(result.source, extension), json.dumps(record, ensure_ascii=False) + "\n")
        elif fmt != "none":
          lines = hydrus_lines(result.prediction, style) if fmt == "hydrus" else tags
          captions.write_caption(result.source, lines, style, extension=extension, append=append, fmt=fmt)
      except OSError as e:  # a full disk, a sidecar path that is a folder: report and go on
        skipped.append((result.source, f"cannot write {fmt} sidecar: {e}"))
        continue
      except captions.CaptionNotUTF8 as e:
        skipped.append((result.source, str(e)))
        continue
      if results is not None:
        results.add(result.source, result.prediction, tags)
      frequency.update(t for t, _ in entries)
      tagged += 1
  return {"tagged": tagged, "skipped": skipped, "seconds": time.perf_counter() - start, "frequency": frequency}
