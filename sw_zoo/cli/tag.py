"""`sw-zoo tag DIR --model BUNDLE`: caption a folder of images for training other models.

    sw-zoo tag ~/dataset --model runs/l2/bundle --recursive --remove_underscore \\
        --general_threshold 0.35 --character_threshold 0.85 --character_tags_first \\
        --undesired_tags "simple_background,white_background" --always_first_tags "1girl,1boy"

Writes `<image>.txt` beside each image (see sw_zoo/inference/captions.py). Option names follow kohya's
tag_images_by_wd14_tagger.py, so existing scripts carry over (dashed spellings work too).
Unreadable images (and, with --append_tags, existing captions that are not UTF-8, left untouched) are
skipped and listed at the end; they never stop the run, but a run that writes no caption at all exits 1.
Arguments that would lose data are refused before any file is touched: a threshold outside [0, 1], a
caption extension that is an image's (or not a plain suffix), two images sharing one caption path
(a.png + a.jpg -> a.txt), a folder that is not writable.
"""
from __future__ import annotations

from sw_zoo.cli import common

import argparse
import os
import sys
from typing import Any

from sw_zoo.data.image_files import IMAGE_EXTENSIONS, iter_images
from sw_zoo.inference import captions

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
  _add(parser, "--dtype", default=None, help="compute dtype (default float32 on CPU, the model's elsewhere)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  return parser


THRESHOLD_OPTIONS = ("thresh", "general_threshold", "character_threshold")


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


def _thresholds(args: argparse.Namespace) -> Any:
  per_category = {}
  if args.thresh is not None:
    per_category["default"] = per_category["general"] = per_category["character"] = args.thresh
  if args.general_threshold is not None:
    per_category["general"] = args.general_threshold
  if args.character_threshold is not None:
    per_category["character"] = args.character_threshold
  return per_category or None


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.use_rating_tags and args.use_rating_tags_as_last_tag:
    raise ValueError("choose one of --use_rating_tags / --use_rating_tags_as_last_tag")
  # Every argument is checked before a file is touched (and before the model loads, which is slow).
  check_thresholds(args)
  extension = captions.normalize_extension(args.caption_extension)
  root = os.path.abspath(os.path.expanduser(args.dir))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root}: no such directory")
  files = list(iter_images(root, recursive=args.recursive))
  if not files:
    raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}"
                            + ("" if args.recursive else " (add --recursive for sub-folders)"))
  captions.check_caption_targets(files, extension)  # collisions, unwritable folders: raises, nothing written
  style = captions.CaptionStyle(
      separator=args.caption_separator, remove_underscore=args.remove_underscore,
      undesired=captions.parse_tag_list(args.undesired_tags), always_first=captions.parse_tag_list(args.always_first_tags),
      character_first=args.character_tags_first,
      rating="first" if args.use_rating_tags else "last" if args.use_rating_tags_as_last_tag else "none")

  from sw_zoo.inference.pretrained import load_pretrained  # jax loads only once there is work to do

  try:
    tagger = load_pretrained(args.model, cache_dir=args.cache_dir, batch_size=args.batch_size,
                             dtype=args.dtype, num_workers=args.workers)
  except RuntimeError as e:  # PretrainedNotAvailable (offline, not cached): the user's to fix
    raise FileNotFoundError(str(e)) from None
  thresholds = _thresholds(args)
  tagger.thresholds_for(thresholds)
  print(f"Tagging {len(files)} images in {root} with {tagger.bundle.path} "
        f"({tagger.bundle.spec.name}, {len(tagger.tags)} tags, {tagger.image_size} px)", file=sys.stderr)
  summary = captions.tag_files(tagger, files, style, thresholds=thresholds, mcut=args.mcut, extension=extension,
                               append=args.append_tags, show_progress=not args.no_progress)
  for path, message in summary["skipped"]:
    print(f"skipped {path}: {message}", file=sys.stderr)
  rate = summary["tagged"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
  print(f"Wrote {summary['tagged']} captions ({extension}) in {summary['seconds']:.1f} s "
        f"({rate:.1f} img/s)" + (f"; skipped {len(summary['skipped'])} images (listed above)" if summary["skipped"] else ""),
        file=sys.stderr)
  if not summary["tagged"]:
    # Asked to write captions and wrote none: a script must not read that as success.
    print(f"sw-zoo tag: no caption written: all {len(files)} images were skipped (listed above)",
          file=sys.stderr)
    return 1
  return 0
