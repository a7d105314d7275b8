"""`sw-zoo prepare SOURCE_KIND ...` (also `python -m data_prep SOURCE_KIND ...`).

    sw-zoo prepare folder   IMAGES_DIR --out data/mine
    sw-zoo prepare manifest tags.csv --out data/mine [--image-root DIR]
    sw-zoo prepare danbooru metadata/ --image-root danbooru2021 --out data/db2021
    sw-zoo prepare sqlite   danbooru2021.db --image-root danbooru2021 --out data/db2021
    sw-zoo prepare e621     posts.csv.gz --tags tags.csv.gz --image-root e621 --out data/e621
    sw-zoo prepare tfds     ~/tensorflow_datasets/my_ds/1.0.0 --out data/my_ds

`sw-zoo inspect DATA` summarises a dataset; `sw-zoo synthetic` builds the built-in one.
"""

from __future__ import annotations

import argparse
import logging
import sys

DESCRIPTION = """\
Convert images + tags into an sw_zoo dataset: ArrayRecord shards, selected_tags.csv (WD order:
4 ratings, general, character, then other kept categories) and dataset.json (written last: its
presence means the dataset is complete), plus report.json listing every skipped item.

Runs in parallel on all cores, streams the source (memory does not grow with its size), resumes
after an interruption (rerun the same command), and writes byte-identical output for the same
inputs and options. A rerun notices edited, added and removed images and captions (--fingerprint)
and rebuilds a finished dataset from changed inputs only with --overwrite. --out must be absent,
empty, or hold a dataset or an interrupted conversion (--force for any other directory). Bad
images, missing files and non-UTF-8 captions are skipped and counted, never fatal.
"""

EPILOG = """\
splits: validation = bucket >= 1000 - VAL_PERMILLE; the HOLDOUT_PERMILLE buckets below that are
  left out; the rest is train. bucket = post id % 1000 for sources with ids (danbooru, sqlite,
  e621, manifests with --id-column), else a stable hash of the image's relative path.
  SW-CV-ModelZoo's Danbooru2021 split (train 0000-0899, validation 0970-0999) is --val-permille 30
  --holdout-permille 70.
ratings: 'g'/'s'/'q'/'e' (or full names) become the WD rating tags general / sensitive /
  questionable / explicit. Danbooru's 2022 change renamed Safe to Sensitive and moved only
  re-rated posts to the new General, so 's' and 'safe' mean sensitive unless
  --rating-s-as general (e.g. for pre-2022 SFW subsets).
tag names: lower case, spaces -> underscores ('long hair' -> long_hair).
"""


def _add_common(parser: argparse.ArgumentParser, *,
                categories: str = "general,character,rating",
                category_codes: str = "general 0, artist 1, copyright 3, character 4, meta 5, "
                                      "rating 9") -> None:
  out = parser.add_argument_group("output")
  out.add_argument("--out", required=True, help="output dataset directory")
  out.add_argument("--shard-size", type=int, default=1000,
                   help="items per shard; a shard may hold fewer records when items are skipped "
                        "(1000)")
  out.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: CPU count; 1 = in-process)")
  out.add_argument("--overwrite", action="store_true",
                   help="rebuild a complete dataset made from other inputs or options")
  out.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds no dataset (its other files are "
                        "kept); never allowed for a directory that is or contains the inputs")
  out.add_argument("--fingerprint", choices=("stat", "hash"), default="stat",
                   help="how a rerun notices changed images and captions: 'stat' compares size + "
                        "modification time, 'hash' the sha256 of their bytes (slower) (stat)")
  out.add_argument("--no-progress", action="store_true", help="hide progress bars and summary")

  images = parser.add_argument_group("images")
  images.add_argument("--max-side", type=int, default=512,
                      help="downscale so the longer side is at most this (LANCZOS after PIL "
                           "reduce; aspect kept; never upscaled); 0 keeps sizes (512)")
  images.add_argument("--format", dest="image_format", choices=("jpeg", "webp"), default="jpeg",
                      help="stored image format (jpeg)")
  images.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (95)")
  images.add_argument("--passthrough-jpeg", action="store_true",
                      help="store upright RGB JPEGs that need no resizing as their original "
                           "bytes instead of re-encoding them")

  tags = parser.add_argument_group("tags")
  tags.add_argument("--categories", default=categories,
                    help=f"tag categories to keep, names or sw_zoo (Danbooru) codes "
                         f"({category_codes}), or 'all' ({categories})")
  tags.add_argument("--min-count", default="1",
                    help="minimum training-split count: N for every category, or per category "
                         "like general=50,character=100 (1)")
  tags.add_argument("--top-k", default=None,
                    help="keep at most the K most frequent tags: K per category, or like "
                         "general=5000,character=2000")
  tags.add_argument("--blacklist", help="file of tags to drop, one per line ('#' comments)")
  tags.add_argument("--aliases", help="CSV old,new: rename tags (chains are followed)")
  tags.add_argument("--tag-categories",
                    help="CSV name,category[,...] (or with a header naming name, category, "
                         "tag_id) or Danbooru tags JSON lines: categories and ids for sources "
                         "without them; tags missing from it are counted as unknown and dropped")
  tags.add_argument("--keep-ratings", default="",
                    help="only keep posts with these ratings, e.g. general,sensitive (all)")
  tags.add_argument("--rating-s-as", choices=("sensitive", "general"), default="sensitive",
                    help="what rating 's' / 'safe' means (sensitive)")
  tags.add_argument("--min-tags", type=int, default=1,
                    help="skip posts with fewer labels than this after selection (1)")

  splits = parser.add_argument_group("splits")
  splits.add_argument("--val-permille", type=int, default=50,
                      help="validation share in 1/1000 (50)")
  splits.add_argument("--holdout-permille", type=int, default=0,
                      help="share left out between train and validation, in 1/1000 (0)")


def _add_box_units(parser) -> None:
  parser.add_argument("--box-units", choices=("normalised", "normalized", "pixels"),
                      default="normalised",
                      help="box coordinates as fractions of the image's width/height, or as "
                           "pixel edges of the image as displayed (EXIF orientation applied), "
                           "normalised by its size (normalised)")


def _add_template(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--image-root", required=True, help="directory the image paths start at")
  parser.add_argument("--image-template", default="512px/{bucket}/{id}.jpg",
                      help="image path under --image-root; fields {id}, {bucket} "
                           "(id %% 1000 as 4 digits), {md5}, {ext} (512px/{bucket}/{id}.jpg)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="sw-zoo prepare", description=DESCRIPTION, epilog=EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="kind", metavar="SOURCE_KIND", required=True)

  def add(name, help_text, description):
    p = sub.add_parser(name, help=help_text, description=description, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    return p

  p = add("folder", "images with sidecar tag files (img.png + img.txt)",
          "A folder tree of images with caption files: img.png + img.txt (or img.png.txt), "
          "tags comma-separated (kohya/WD) or space-separated (booru). 'rating:x' tags set the "
          "rating. All tags are general unless --tag-categories is given.")
  p.add_argument("root", help="the image folder (searched recursively)")
  p.add_argument("--caption-ext", default=".txt", help="tag file extension (.txt)")
  p.add_argument("--box-ext", default=None,
                 help="read one object's box from a file with this extension beside each image "
                      "(img.png + img.box, or img.png.box): 'x0 y0 x1 y1' (spaces or commas), "
                      "or JSON [x0, y0, x1, y1] / {\"x0\": ..., \"y0\": ..., \"x1\": ..., "
                      "\"y1\": ...}; an empty file or none means no box (default: no boxes)")
  _add_box_units(p)
  _add_common(p)

  p = add("manifest", "a CSV or JSON-lines list: path, tags[, rating][, id]",
          "A CSV (.csv/.tsv) or JSON-lines manifest with one image per row: path, tags (a tag "
          "string, or a JSON list), optional rating and id. Relative paths start at "
          "--image-root (default: the manifest's folder).")
  p.add_argument("manifest", help="the manifest file")
  p.add_argument("--image-root", default=None, help="directory relative paths start at")
  p.add_argument("--path-column", default="path", help="(path)")
  p.add_argument("--tags-column", default="tags", help="(tags)")
  p.add_argument("--rating-column", default="rating", help="(rating; '' for none)")
  p.add_argument("--id-column", default=None,
                 help="integer post ids; when given, splits use id %% 1000")
  p.add_argument("--box-columns", default=None, metavar="X0,Y0,X1,Y1",
                 help="four columns holding one object's box (left, top, right, bottom); rows "
                      "with all four empty have no box (default: no boxes)")
  _add_box_units(p)
  _add_common(p)

  p = add("danbooru", "Danbooru20xx JSON-lines metadata + 512px/<bucket>/<id>.jpg images",
          "The Danbooru2021 layout: JSON-lines post metadata (id, md5, file_ext, rating, "
          "tag_string_general/character/copyright/artist/meta) and images at "
          "<image-root>/512px/<id % 1000 :04d>/<id>.jpg. Older dumps with a 'tags' list work "
          "too. Posts whose file_ext is not an image are excluded (not_image).")
  p.add_argument("metadata", nargs="+", help="metadata files, or directories of *.json/*.jsonl")
  _add_template(p)
  _add_common(p)

  p = add("sqlite", "the fire-eggs Danbooru SQLite database (SW-CV-ModelZoo)",
          "The fire-eggs Danbooru SQLite database: images(image_id, rating, md5, file_ext, ...), "
          "tags(tag_id, name, category, count), imageTags(image_id, tag_id). Every name is "
          "configurable below; rating/md5/file_ext/category are optional.")
  p.add_argument("database", help="the .db / .sqlite file")
  _add_template(p)
  p.add_argument("--where", default=None,
                 help="SQL condition on the images table (alias i), e.g. \"i.is_deleted = 0\"")
  schema = p.add_argument_group("database schema")
  from data_prep.sources.sqlite_db import SqliteSchema  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  for field in dataclasses.fields(SqliteSchema):
    schema.add_argument(f"--{field.name.replace('_', '-')}", default=field.default,
                        help=f"({field.default})")
  _add_common(p)

  p = add("e621", "the e621 db_export: posts.csv[.gz] + tags.csv[.gz] + md5-named images",
          "The e621 database export (e621.net/db_export), plain or gzip-compressed:\n"
          "  posts CSV  id, md5, file_ext, rating, tag_string, is_deleted (other columns "
          "ignored)\n"
          "  tags CSV   id, name, category\n"
          "Images: <image-root>/<md5[0:2]>/<md5[2:4]>/<md5>.<file_ext> (e621's own layout), "
          "else\n<image-root>/<md5>.<file_ext>. Posts without an image (missing_file) are "
          "skipped and\nlisted in report.json; deleted posts (deleted) and webm/swf/mp4 posts "
          "(not_image) are\ncounted there. Tags missing from the tags CSV are counted as unknown "
          "and dropped.\n"
          "Categories: e621's are mapped onto sw_zoo's: meta (e621 7) becomes meta 5, species "
          "(e621 5)\nbecomes a category of its own, code 10 (kept by default); contributor 2, "
          "invalid 6 and\nlore 8 keep their codes. The names work in --categories, --min-count "
          "and --top-k.\n"
          "Ratings: s/q/e are read as Danbooru's; e621 has no separate General rating, its s "
          "(Safe)\ncovers Danbooru's General and Sensitive and is sensitive unless "
          "--rating-s-as general.")
  p.add_argument("posts", help="posts-YYYY-MM-DD.csv[.gz]")
  p.add_argument("--tags", required=True, help="tags-YYYY-MM-DD.csv[.gz]")
  p.add_argument("--image-root", required=True, help="directory holding the md5-named images")
  _add_common(p, categories="general,character,species,rating",
              category_codes="general 0, artist 1, contributor 2, copyright 3, character 4, "
                             "meta 5, invalid 6, lore 8, rating 9, species 10")

  p = add("tfds", "a prepared tensorflow_datasets directory",
          "A tensorflow_datasets dataset prepared on disk (the directory holding "
          "dataset_info.json). Needs one Image feature and one label feature: "
          "Sequence(ClassLabel), ClassLabel, Sequence(Text)/Text, or a 1-D multi-hot Tensor. "
          "The dataset's splits are kept; without a validation split one is carved from train "
          "by id % 1000. array_record datasets are read without TensorFlow.")
  p.add_argument("directory", help="e.g. ~/tensorflow_datasets/my_dataset/1.0.0")
  p.add_argument("--image-key", default=None, help="image feature (auto if only one)")
  p.add_argument("--labels-key", default=None, help="label feature (auto if only one)")
  p.add_argument("--id-key", default=None, help="integer id feature (default: numbering)")
  p.add_argument("--label-names", default=None,
                 help="file with one name per line for a multi-hot Tensor label feature")
  _add_common(p)

  return parser


def _options(args: argparse.Namespace):
  from data_prep.convert import PrepareOptions  # pylint: disable=g-import-not-at-top
  from data_prep.tags import parse_categories, parse_per_category, parse_rating
  categories, min_count, top_k = args.categories, args.min_count, args.top_k
  if args.kind == "e621":  # e621-only category names (species, lore, ...) -> their codes.
    from data_prep.sources.e621 import translate_category_spec
    categories, min_count, top_k = map(translate_category_spec, (categories, min_count, top_k))
  keep = tuple(parse_rating(r, args.rating_s_as) or r.strip()
               for r in args.keep_ratings.split(",") if r.strip())
  return PrepareOptions(
      max_side=args.max_side or None, image_format=args.image_format, quality=args.quality,
      passthrough_jpeg=args.passthrough_jpeg, shard_size=args.shard_size,
      val_permille=args.val_permille, holdout_permille=args.holdout_permille,
      categories=parse_categories(categories),
      min_count=parse_per_category(min_count, "--min-count"),
      top_k=parse_per_category(top_k, "--top-k"), blacklist=args.blacklist,
      aliases=args.aliases, tag_categories=args.tag_categories, keep_ratings=keep,
      rating_s_as=args.rating_s_as, min_tags=args.min_tags)


def _source(args: argparse.Namespace):
  if args.kind == "folder":
    from data_prep.sources.folder import FolderSource  # pylint: disable=g-import-not-at-top
    return FolderSource(args.root, caption_ext=args.caption_ext, exclude=args.out,
                        box_ext=args.box_ext, box_units=args.box_units)
  if args.kind == "manifest":
    from data_prep.sources.manifest import ManifestSource  # pylint: disable=g-import-not-at-top
    return ManifestSource(args.manifest, image_root=args.image_root,
                          path_column=args.path_column, tags_column=args.tags_column,
                          rating_column=args.rating_column, id_column=args.id_column,
                          box_columns=args.box_columns, box_units=args.box_units)
  if args.kind == "danbooru":
    from data_prep.sources.danbooru import DanbooruSource  # pylint: disable=g-import-not-at-top
    return DanbooruSource(args.metadata, image_root=args.image_root,
                          image_template=args.image_template)
  if args.kind == "sqlite":
    import dataclasses  # pylint: disable=g-import-not-at-top
    from data_prep.sources.sqlite_db import SqliteSchema, SqliteSource
    schema = SqliteSchema(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(SqliteSchema)})
    return SqliteSource(args.database, image_root=args.image_root,
                        image_template=args.image_template, schema=schema, where=args.where)
  if args.kind == "e621":
    from data_prep.sources.e621 import E621Source  # pylint: disable=g-import-not-at-top
    return E621Source(args.posts, tags=args.tags, image_root=args.image_root)
  if args.kind == "tfds":
    from data_prep.sources.tfds_dir import TfdsSource  # pylint: disable=g-import-not-at-top
    return TfdsSource(args.directory, image_key=args.image_key, labels_key=args.labels_key,
                      id_key=args.id_key, label_names=args.label_names)
  raise AssertionError(args.kind)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv or ["--help"])  # no arguments: show the source kinds
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    from data_prep.convert import prepare  # pylint: disable=g-import-not-at-top
    prepare(_source(args), args.out, _options(args), workers=args.workers,
            overwrite=args.overwrite, force=args.force, fingerprint=args.fingerprint,
            progress=not args.no_progress)
  except KeyboardInterrupt:
    print("interrupted: finished shards are kept; run the same command again to resume",
          file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
