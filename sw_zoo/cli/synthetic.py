"""`sw-zoo synthetic` (also `python -m data_prep.synthetic`): the built-in dataset."""
from __future__ import annotations

import argparse
import logging

from data_prep import synthetic


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="sw-zoo synthetic",
      description=("Generate the built-in synthetic booru-like tagging dataset (shapes on "
                   "backgrounds, %d tags: 4 ratings, %d general, %d characters) as ArrayRecord "
                   "shards + selected_tags.csv + dataset.json. Deterministic for a seed; rerunning "
                   "with the same arguments is a no-op."
                   % (len(synthetic.tag_vocab()), len(synthetic.GENERAL_TAGS), len(synthetic.CHARACTER_TAGS))))
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num-train", type=int, default=10_000, help="training images (10000)")
  parser.add_argument("--num-val", type=int, default=1_000, help="validation images (1000)")
  parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (128)")
  parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
  parser.add_argument("--drop-tag-fraction", type=float, default=0.0,
                      help="probability of removing each true non-rating tag from a TRAIN "
                           "image's labels, to simulate missing labels; removed tags are kept in "
                           "the record's 'dropped' field; validation stays clean (0.0)")
  parser.add_argument("--correlated-noise", type=float, default=0.0, metavar="P",
                      help="correlated, input-dependent label noise on TRAIN images: an annotator "
                           "misses about this fraction of objects (small, low-contrast ones and "
                           "those on busy backgrounds more often), dropping all tags only that "
                           "object justifies and lowering the count tag, and misreads some colours "
                           "as a neighbouring one; removed true tags go to 'dropped', the wrong "
                           "tags added are counted in dataset.json only; validation stays clean "
                           "(0.0)")
  parser.add_argument("--box", action="store_true",
                      help="store the bounding box of each image's largest object in its record "
                           "(normalised x0, y0, x1, y1; for training a box head); images and "
                           "tags are unchanged")
  parser.add_argument("--shard-size", type=int, default=2_000, help="records per shard (2000)")
  parser.add_argument("--workers", type=int, default=None,
                      help="worker processes (default: CPU count; 1 = in-process)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing dataset made with different arguments")
  parser.add_argument("--force", action="store_true",
                      help="write into a non-empty --out that holds no synthetic dataset (its "
                           "other files are kept; a dataset.json there also needs --overwrite)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  synthetic.generate(args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                     seed=args.seed, drop_tag_fraction=args.drop_tag_fraction, shard_size=args.shard_size,
                     workers=args.workers, overwrite=args.overwrite, force=args.force,
                     progress=not args.no_progress, box=args.box,
                     correlated_noise=args.correlated_noise)
  return 0
