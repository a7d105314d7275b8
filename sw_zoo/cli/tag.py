"""`sw-zoo tag DIR --model BUNDLE`: caption a folder of images for training other models.

    sw-zoo tag ~/dataset --model runs/l2/bundle --recursive --remove_underscore \\
        --general_threshold 0.35 --character_threshold 0.85 --character_tags_first \\
        --undesired_tags "simple_background,white_background" --always_first_tags "1girl,1boy"
    sw-zoo tag ~/dataset --model runs/l2/bundle --format hydrus        # img.jpg.txt, namespaced
    sw-zoo tag ~/dataset --model runs/l2/bundle --format none --output_path tags.jsonl   # scores only

Writes `<image>.txt` beside each image (see sw_zoo/inference/captions.py; other sidecars with
--format, see sw_zoo/inference/tag_outputs.py) and, with --output_path, one JSON/JSONL file of
every image's scores. Option names follow kohya's tag_images_by_wd14_tagger.py, so existing
scripts carry over (dashed spellings work too). The forward pass runs in onnxruntime or JAX,
whichever is faster here (--backend). A tag-frequency summary ends the run.
Unreadable images (and, with --append_tags, existing captions that are not UTF-8, left untouched) are
skipped and listed at the end; they never stop the run, but a run that writes no caption at all exits 1.
Arguments that would lose data are refused before any file is touched: a threshold outside [0, 1], a
caption extension that is an image's (or not a plain suffix), two images sharing one caption path
(a.png + a.jpg -> a.txt), a folder that is not writable, an existing --output_path without --force.
"""
from __future__ import annotations

from sw_zoo.cli import common

import argparse
import os
import sys
from typing import Any

from sw_zoo.data import vocab as vocab_lib
from sw_zoo.data.image_files import IMAGE_EXTENSIONS, iter_images
from sw_zoo.inference import backends, captions, tag_outputs

def _add(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
  """An option under kohya's underscore name and its dashed spelling."""
  dashed = name.replace("_", "-")
  parser.add_argument(name, *([dashed] if dashed != name else []), **kwargs)


def build_parser() -> argparse.ArgumentParser:
  parser = common.parser("sw-zoo tag", __doc__)
  parser.add_argument("dir", metavar="DIR", help="folder of images to caption")
  _add(parser, "--model", required=True, help="a model bundle directory or a registered name")
  _add(parser, "--cache_dir", default=None, help="cache for registered names (default $SW_ZOO_CACHE or ~/.cache/sw_zoo)")
  _add(parser, "--recursive", action="store_true", help="also caption images in sub-folders")
  _add(parser, "--batch_size", type=int, default=16, help="images per forward pass (16)")
  _add(parser, "--max_data_loader_n_workers", type=int, default=None, dest="workers",
       help="threads decoding images (default min(4, CPUs))")
  _add(parser, "--thresh", type=float, default=None,
       help="threshold for every category (default: the bundle's thresholds, else 0.35)")
  _add(parser, "--general_threshold", type=float, default=None, help="threshold for general tags (default --thresh)")
  _add(parser, "--character_threshold", type=float, default=None,
       help="threshold for character tags (default --thresh)")
  _add(parser, "--mcut", action="store_true", help="choose thresholds per image by MCut instead")
  _add(parser, "--undesired_tags", default="", help="comma-separated tags never to write")
  _add(parser, "--always_first_tags", default="", help="comma-separated tags put first, in this order, when present")
  _add(parser, "--character_tags_first", action="store_true", help="character tags before general tags")
  _add(parser, "--remove_underscore", action="store_true", help="write long_hair as 'long hair' (kaomoji kept)")
  _add(parser, "--use_rating_tags", action="store_true", help="prepend the most likely rating tag")
  _add(parser, "--use_rating_tags_as_last_tag", action="store_true", help="append the most likely rating tag")
  _add(parser, "--append_tags", action="store_true", help="add new tags to existing captions instead of replacing them")
  _add(parser, "--caption_extension", default=".txt", help="caption file extension (.txt)")
  _add(parser, "--caption_separator", default=", ", help="between tags (', ')")
  _add(parser, "--category_threshold", action="append", default=[], metavar="CATEGORY=VALUE",
       help="threshold for one more category, e.g. copyright=0.5 (repeatable; categories: "
            "general, character, copyright, artist, meta)")
  _add(parser, "--tag_replacement", default=None, metavar="SRC,DST;SRC2,DST2",
       help="write tag SRC as DST (kohya's syntax; a literal , or ; inside a tag as \\, or \\;)")
  _add(parser, "--character_tag_expand", action="store_true",
       help="write a character 'name_(series)' as two tags 'name, series'")
  _add(parser, "--escape_parentheses", action="store_true",
       help="write ( and ) as \\( and \\) (prompt syntax: unescaped they are emphasis)")
  _add(parser, "--add_confident_as_weight", action="store_true", dest="weights",
       help="write each tag with its score as a prompt weight: (tag:0.95)")
  _add(parser, "--format", default="txt", choices=tag_outputs.FORMATS,
       help="sidecar beside each image: txt (caption, default), hydrus (img.jpg.txt, one namespaced tag "
            "per line), json (<stem>.json with scores), none (only --output_path)")
  _add(parser, "--output_path", default=None, metavar="FILE.json|FILE.jsonl",
       help="also write every image's scores and caption into one file (replaced at the end, only if complete)")
  parser.add_argument("--force", action="store_true", help="replace an existing --output_path")
  _add(parser, "--frequency_tags", action="store_true", help="list every written tag's frequency at the end "
       "(default: the 20 most frequent)")
  _add(parser, "--tta", choices=("none", "flip"), default="none",
       help="flip: average each image's scores with its mirror's (2x the compute)")
  _add(parser, "--backend", choices=backends.BACKENDS, default="auto",
       help="forward pass: onnxruntime or JAX; auto picks the faster one available (onnxruntime on a CPU)")
  parser.add_argument("--onnx", action="store_const", const="onnx", dest="backend",
                      help="kohya's spelling of --backend onnx")
  _add(parser, "--dtype", default=None, help="JAX compute dtype (default float32 on CPU, the model's elsewhere)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  return parser


THRESHOLD_OPTIONS = ("thresh", "general_threshold", "character_threshold")  # checked by check_thresholds


def check_thresholds(args: argparse.Namespace) -> None:
  """ValueError naming the option for a threshold outside [0, 1]: above 1 no tag passes and every
  caption would be replaced by an empty one (35 meant as a percentage is the usual slip)."""
  for name in THRESHOLD_OPTIONS:
    value = getattr(args, name)
    if value is None or 0.0 <= value <= 1.0:  # NaN fails both comparisons, so it is refused too
      continue
    hint = f" (did you mean {value / 100:g}?)" if 1.0 < value <= 100.0 else ""
    raise ValueError(f"--{name} {value:g}: a threshold is a probability between 0 and 1{hint}; "
                     "no caption was written")


def category_thresholds(args: argparse.Namespace) -> dict[str, float]:
  """--category_threshold NAME=VALUE options -> {name: value}; ValueError naming a bad one."""
  known = set(vocab_lib.CATEGORY_NAMES.values()) - {"rating"}
  out = {}
  for item in args.category_threshold:
    name, sep, value = item.partition("=")
    name = name.strip()
    try:
      number = float(value)
    except ValueError:
      number = None
    if not sep or name not in known or number is None:
      raise ValueError(f"--category_threshold {item!r}: expected CATEGORY=VALUE with CATEGORY one of "
                       f"{', '.join(sorted(known))} (ratings are scores, not thresholded); no caption was written")
    if not 0.0 <= number <= 1.0:
      raise ValueError(f"--category_threshold {item!r}: a threshold is a probability between 0 and 1; "
                       "no caption was written")
    out[name] = number
  return out


def _thresholds(args: argparse.Namespace) -> Any:
  per_category = {}
  if args.thresh is not None:
    per_category["default"] = per_category["general"] = per_category["character"] = args.thresh
  if args.general_threshold is not None:
    per_category["general"] = args.general_threshold
  if args.character_threshold is not None:
    per_category["character"] = args.character_threshold
  per_category.update(category_thresholds(args))
  return per_category or None


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.use_rating_tags and args.use_rating_tags_as_last_tag:
    raise ValueError("choose one of --use_rating_tags / --use_rating_tags_as_last_tag")
  # Every argument is checked before a file is touched (and before the model loads, which is slow).
  check_thresholds(args)
  thresholds = _thresholds(args)
  replacements = captions.parse_tag_replacement(args.tag_replacement)
  extension = captions.normalize_extension(".json" if args.format == "json" else args.caption_extension)
  if args.format == "none" and not args.output_path:
    raise ValueError("--format none writes no sidecar: give --output_path FILE.jsonl for the results")
  results_path = tag_outputs.check_results_path(args.output_path, force=args.force) if args.output_path else None
  root = os.path.abspath(os.path.expanduser(args.dir))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root}: no such directory")
  files = list(iter_images(root, recursive=args.recursive))
  if not files:
    raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}"
                            + ("" if args.recursive else " (add --recursive for sub-folders)"))
  if args.format != "none":  # collisions, unwritable folders: raises, nothing written
    captions.check_caption_targets(files, extension, fmt=args.format)
  style = captions.CaptionStyle(
      separator=args.caption_separator, remove_underscore=args.remove_underscore,
      undesired=captions.parse_tag_list(args.undesired_tags), always_first=captions.parse_tag_list(args.always_first_tags),
      character_first=args.character_tags_first,
      rating="first" if args.use_rating_tags else "last" if args.use_rating_tags_as_last_tag else "none",
      replacements=replacements, character_expand=args.character_tag_expand, escape=args.escape_parentheses,
      weights=args.weights)

  from sw_zoo.inference.pretrained import load_pretrained  # jax loads only once there is work to do

  try:
    tagger = load_pretrained(args.model, cache_dir=args.cache_dir, batch_size=args.batch_size, backend=args.backend,
                             dtype=args.dtype, num_workers=args.workers)
  except RuntimeError as e:  # PretrainedNotAvailable (offline, not cached): the user's to fix
    raise FileNotFoundError(str(e)) from None
  tagger.thresholds_for(thresholds)
  print(f"Tagging {len(files)} images in {root} with {tagger.bundle.path} "
        f"({tagger.bundle.spec.name}, {len(tagger.tags)} tags, {tagger.image_size} px, {tagger.describe_backend()}"
        + (", tta flip" if args.tta == "flip" else "") + ")", file=sys.stderr)
  results = None
  if results_path:
    results = tag_outputs.ResultsFile(results_path, root=root, model={
        "bundle": tagger.bundle.path, "name": tagger.bundle.spec.name, "image_size": tagger.image_size,
        "thresholds": tagger.thresholds_for(thresholds), "mcut": args.mcut, "tta": args.tta})
  try:
    summary = tag_outputs.tag_files(tagger, files, style, thresholds=thresholds, mcut=args.mcut, extension=extension,
                                    append=args.append_tags, fmt=args.format, tta=args.tta, results=results,
                                    show_progress=not args.no_progress)
  except BaseException:
    if results is not None:
      results.abort()  # the previous results file, if any, stays as it was
    raise
  if results is not None:
    results.commit()
  for path, message in summary["skipped"]:
    print(f"skipped {path}: {message}", file=sys.stderr)
  _print_frequency(summary, everything=args.frequency_tags)
  rate = summary["tagged"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
  written = f"{summary['tagged']} {args.format} sidecars ({extension})" if args.format != "none" else f"{summary['tagged']} images"
  print(f"Wrote {written}" + (f" and {results_path}" if results_path else "")
        + f" in {summary['seconds']:.1f} s ({rate:.1f} img/s)"
        + (f"; skipped {len(summary['skipped'])} images (listed above)" if summary["skipped"] else ""),
        file=sys.stderr)
  if not summary["tagged"]:
    # Asked to write captions and wrote none: a script must not read that as success.
    print(f"sw-zoo tag: no caption written: all {len(files)} images were skipped (listed above)",
          file=sys.stderr)
    return 1
  return 0


def _print_frequency(summary: dict[str, Any], *, everything: bool) -> None:
  counts = summary["frequency"]
  if not counts:
    return
  top = None if everything else 20
  shown = "every tag" if everything or len(counts) <= 20 else f"the 20 most frequent of {len(counts)}"
  print(f"Tag frequency over {summary['tagged']} images ({shown}):", file=sys.stderr)
  for line in tag_outputs.frequency_lines(counts, summary["tagged"], top=top):
    print(line, file=sys.stderr)
