"""`sw-zoo eval SOURCE --data DIR`: how good is a tagger, and at which threshold.

  sw-zoo eval runs/demo --data data/synthetic                 # latest checkpoint of a run
  sw-zoo eval runs/demo/checkpoints/600 --split validation --tta flip
  sw-zoo eval path/to/bundle --data data/mine --threshold-method p_eq_r

Writes to --out (default SOURCE/eval_<split>, or .../eval_<split>_step<N> for one named step):
  eval_summary.json    everything below, per category, plus images/s of the forward pass
  per_tag.csv          tag, category, count, P, R, F1 (at --threshold), AP, AUC, best threshold
  thresholds.json      suggested threshold per category (also written into a bundle's config.json
                       when it has a `thresholds` key)
  pr_curve.png, f1_vs_threshold.png, tag_f1_vs_frequency.png
  box_best_worst.png   (a model with a box head) the 3 best and 3 worst boxes by IoU; the
                       summary then has box_mean_iou and box_iou50_accuracy
and prints a table per category. Multi-host: run the same command on every host with --multihost.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sw_zoo.cli import common
from sw_zoo.cli.common import init_distributed
from sw_zoo.evaluation import thresholds as thresholds_lib

DEFAULT_BATCH_SIZE = 64
BOX_EXAMPLES = 3  # best and worst box predictions drawn (the timm box-head write-up's top-3)


def build_parser() -> argparse.ArgumentParser:
  p = common.parser("sw-zoo eval", __doc__, epilog=False)
  p.add_argument("source", metavar="CHECKPOINT_OR_BUNDLE",
                 help="a run's workdir (latest checkpoint), checkpoints/<step>, or a model bundle directory")
  p.add_argument("--data", help="dataset directory (dataset.json + shards + selected_tags.csv); default: the "
                 "run's config.data.dir")
  p.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
  p.add_argument("--out", help="output directory (default: SOURCE/eval_<split>)")
  p.add_argument("--threshold", type=float, help="threshold for the at-threshold metrics and per-tag P/R/F1 "
                 "(default: the run's config.eval.threshold, a bundle's default, else "
                 f"{thresholds_lib.DEFAULT_THRESHOLD})")
  p.add_argument("--threshold-method", choices=("best_f1", "p_eq_r"), default="best_f1",
                 help="how the suggested per-category thresholds are chosen (default: best_f1)")
  p.add_argument("--bins", type=int, default=1024, help="score histogram bins; thresholds are multiples of "
                 "1/bins (default 1024; memory = tags x bins x 8 bytes)")
  p.add_argument("--tta", choices=("none", "flip"), default="none",
                 help="test-time augmentation: 'flip' averages the scores of each image and its mirror")
  p.add_argument("--batch-size", type=int, help="global eval batch size (default: the run's)")
  p.add_argument("--dtype", help="compute dtype override, e.g. float32 on a CPU for a bfloat16 run")
  p.add_argument("--no-ema", action="store_true", help="evaluate the raw params even if the run kept an EMA")
  p.add_argument("--num-threads", type=int, help="data loading threads (default: the run's)")
  p.add_argument("--timing-repeats", type=int, default=3,
                 help="timed forward passes for eval_images_per_s (0: skip the timing)")
  p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--force", action="store_true", help="write into --out even if it holds something else")
  p.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() first (every "
                 "host runs the same command; cluster settings from the environment)")
  return p


def _check_vocab(source, tags, tags_path: str) -> None:
  if source.spec.num_tags != len(tags):
    raise ValueError(f"{source.described} has {source.spec.num_tags} outputs but {tags_path} lists {len(tags)} tags: "
                     "evaluate on a dataset with the tag set the model was trained on")
  if source.tags is not None and source.tags.names != tags.names:
    i = next(i for i, (a, b) in enumerate(zip(source.tags.names, tags.names)) if a != b)
    raise ValueError(f"the bundle's selected_tags.csv and {tags_path} differ at label index {i}: "
                     f"{source.tags.names[i]!r} vs {tags.names[i]!r}")


def _inputs(args: argparse.Namespace):
  """The model source, dataset, tags, threshold and batch size `args` name, all checked before any
  model runs; errors name the bad path or value."""
  import jax

  from sw_zoo.data import vocab as vocab_lib
  from sw_zoo import run_dir, storage
  from sw_zoo.data import dataset_info
  from sw_zoo.inference import model_source

  source = model_source.load(args.source, use_ema=not args.no_ema)
  settings = source.settings
  data_dir = args.data or settings.get("data_dir")
  if not data_dir:
    raise ValueError("--data is required (the source names no dataset directory)")
  data_dir = run_dir.absolute(data_dir)
  storage.check_bucket(data_dir)
  if not storage.exists(storage.join(data_dir, "dataset.json")):
    raise FileNotFoundError(f"{data_dir} has no dataset.json (not a prepared dataset)")
  tags_path = dataset_info.selected_tags_path(data_dir)
  tags = vocab_lib.read_selected_tags(tags_path)
  _check_vocab(source, tags, storage.join(data_dir, "selected_tags.csv"))
  # dataset.json read as plain JSON: its own consistency checks come later, with the data.
  splits = run_dir.read_json(storage.join(data_dir, "dataset.json")).get("splits") or {}
  if args.split not in splits:
    raise ValueError(f"--split {args.split!r}: {data_dir} has the splits {sorted(splits)}")
  threshold = next(t for t in (args.threshold, settings.get("threshold"), thresholds_lib.DEFAULT_THRESHOLD)
                   if t is not None)
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
  if args.bins < 2:
    raise ValueError(f"--bins must be at least 2, got {args.bins}")
  batch_size = args.batch_size or settings.get("batch_size") or DEFAULT_BATCH_SIZE
  if batch_size % jax.device_count():
    raise ValueError(f"batch size {batch_size} is not divisible by the {jax.device_count()} devices "
                     "(set --batch-size)")
  return source, data_dir, tags, threshold, batch_size


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.multihost:
    init_distributed()
  import jax

  from sw_zoo import sharding, storage
  from sw_zoo.evaluation import box_metrics, eval_outputs, report
  from sw_zoo.evaluation.evaluator import Evaluator
  from sw_zoo.data.atomic_file import check_output_dir
  from sw_zoo.inference.bundle import CONFIG_FILE

  source, data_dir, tags, threshold, batch_size = _inputs(args)
  settings = source.settings
  out_dir = args.out or storage.join(
      source.home, f"eval_{args.split}" + (f"_step{source.step}" if source.step_given else ""))
  lead = jax.process_index() == 0
  check_output_dir(out_dir, is_own=eval_outputs.is_eval_dir, what="sw-zoo eval output", force=args.force,
                   protect=[data_dir, source.root])

  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)])
  spec = source.spec
  model = spec.create(dtype=args.dtype)
  if lead:
    print(f"sw-zoo eval: {source.described}; {spec.name} act={spec.act} attn={spec.attn} at {source.image_size}px; "
          f"{data_dir} split {args.split!r}, {len(tags)} tags; batch {batch_size}, tta {args.tta}", flush=True)
  has_box = spec.has_box
  evaluator = Evaluator(model, mesh=mesh, num_tags=len(tags), threshold=threshold, num_bins=args.bins, tta=args.tta,
                        box=has_box)
  result = evaluator.run(source.nested_params(), data_dir, split=args.split, global_batch_size=batch_size,
                         image_size=source.image_size, num_threads=args.num_threads or settings.get("num_threads") or 2,
                         prefetch=settings.get("prefetch") or 4, timing_repeats=args.timing_repeats,
                         show_progress=not args.no_progress, box_examples=BOX_EXAMPLES if has_box else 0)
  rep = report.summarise(result.stats, tags, threshold=threshold)
  suggested = thresholds_lib.suggest(rep.categories, method=args.threshold_method, split=args.split, bins=args.bins)
  num_images = int(result.stats["num_images"])
  summary: dict[str, Any] = {
      "source": source.described, "kind": source.kind, "step": source.step, "model": spec.name,
      "data_dir": data_dir, "split": args.split, "images": num_images, "num_tags": len(tags),
      "threshold": threshold, "bins": args.bins, "tta": args.tta, "batch_size": batch_size,
      "eval_images_per_s": result.forward_images_per_s,
      "eval_pass_images_per_s": num_images / result.seconds if result.seconds > 0 else None,
  }
  if source.train_summary and "train_images_per_s" in source.train_summary:
    summary["train_images_per_s"] = source.train_summary["train_images_per_s"]
  summary.update(rep.categories[report.ALL])  # top level = all tags, as the trainer's summary
  if has_box:
    summary.update(box_metrics.box_scores(result.stats))
  summary["categories"] = rep.categories
  summary["thresholds"] = suggested
  if not lead:
    return 0

  # Checked above (empty, absent, our own or --force), so stale files of its own kinds may go.
  with storage.output_dir(out_dir, owned=lambda rel: True) as local_out:
    written = eval_outputs.write(local_out, summary, rep, tags, suggested, threshold=threshold,
                                 plots=not args.no_plots, box_extremes=result.box_extremes)
  bundle_dir = source.root if source.kind == "bundle" else source.run_bundle()
  bundle_config = os.path.join(bundle_dir, CONFIG_FILE) if bundle_dir else None
  if bundle_config and thresholds_lib.update_bundle(bundle_config, suggested):
    bundle_url = storage.url_of(bundle_dir) if source.origin else None
    if bundle_url:  # the bundle read from gs:// is updated there too, config.json last
      storage.push(bundle_dir, bundle_url, last=[CONFIG_FILE])
    print(f"Updated the thresholds in {bundle_url or bundle_config} ({args.threshold_method})")

  print(report.category_table(rep.categories, threshold=threshold))
  speed = f"{result.forward_images_per_s:.1f} img/s forward" if result.forward_images_per_s else "forward not timed"
  print(f"{num_images} images, {speed}; suggested thresholds ({args.threshold_method}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in suggested["by_category"].items()))
  if has_box:
    scores = box_metrics.box_scores(result.stats)
    print(f"Box head: {scores['boxes']} labelled boxes, mean IoU {scores['box_mean_iou']:.4f}, "
          f"IoU>={box_metrics.IOU_HIT} accuracy {scores['box_iou50_accuracy']:.4f}")
  print(f"Wrote {', '.join(written)} to {out_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
