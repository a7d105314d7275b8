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
and prints a table per category. Multi-host: run the same command on every host with --multihost.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from typing import Any

DEFAULT_THRESHOLD = 0.4  # configs/common.py's eval.threshold
DEFAULT_BATCH_SIZE = 64


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="sw-zoo eval", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("source", metavar="CHECKPOINT_OR_BUNDLE",
                 help="a run's workdir (latest checkpoint), checkpoints/<step>, or a model bundle directory")
  p.add_argument("--data", help="dataset directory (dataset.json + shards + selected_tags.csv); default: the "
                 "run's config.data.dir")
  p.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
  p.add_argument("--out", help="output directory (default: SOURCE/eval_<split>)")
  p.add_argument("--threshold", type=float, help="threshold for the at-threshold metrics and per-tag P/R/F1 "
                 f"(default: the run's config.eval.threshold, a bundle's default, else {DEFAULT_THRESHOLD})")
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
  p.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() first (every "
                 "host runs the same command; cluster settings from the environment)")
  return p


def _json_safe(value: Any) -> Any:
  """NaN (an undefined metric) -> null, so the file is strict JSON."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def _check_vocab(source, tags, tags_path: str) -> None:
  if source.num_outputs != len(tags):
    raise ValueError(f"{source.described} has {source.num_outputs} outputs but {tags_path} lists {len(tags)} tags: "
                     "evaluate on a dataset with the tag set the model was trained on")
  if source.tags is not None and source.tags.names != tags.names:
    i = next(i for i, (a, b) in enumerate(zip(source.tags.names, tags.names)) if a != b)
    raise ValueError(f"the bundle's selected_tags.csv and {tags_path} differ at label index {i}: "
                     f"{source.tags.names[i]!r} vs {tags.names[i]!r}")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  import jax

  if args.multihost:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
  import jax.numpy as jnp

  from sw_zoo import sharding
  from sw_zoo.data import vocab as vocab_lib
  from sw_zoo.evaluation import model_source, plots, report, runner, thresholds
  from sw_zoo.models import create_model

  try:  # bad input: one line saying what and where, not a traceback
    source = model_source.load(args.source, use_ema=not args.no_ema)
    settings = source.settings
    data_dir = args.data or settings.get("data_dir")
    if not data_dir:
      raise ValueError("--data is required (the source names no dataset directory)")
    data_dir = os.path.abspath(data_dir)
    if not os.path.exists(os.path.join(data_dir, "dataset.json")):
      raise FileNotFoundError(f"{data_dir} has no dataset.json (not a prepared dataset)")
    tags_path = os.path.join(data_dir, "selected_tags.csv")
    tags = vocab_lib.read_selected_tags(tags_path)
    _check_vocab(source, tags, tags_path)
    threshold = next(t for t in (args.threshold, settings.get("threshold"), DEFAULT_THRESHOLD) if t is not None)
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    if args.bins < 2:
      raise ValueError(f"--bins must be at least 2, got {args.bins}")
    batch_size = args.batch_size or settings.get("batch_size") or DEFAULT_BATCH_SIZE
    if batch_size % jax.device_count():
      raise ValueError(f"batch size {batch_size} is not divisible by the {jax.device_count()} devices "
                       "(set --batch-size)")
  except (FileNotFoundError, KeyError, ValueError) as err:
    print(f"sw-zoo eval: {err.args[0] if err.args else err}", file=sys.stderr)
    return 2
  out_dir = args.out or os.path.join(
      source.root, f"eval_{args.split}" + (f"_step{source.step}" if source.step_given else ""))
  lead = jax.process_index() == 0

  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)])
  m = source.model
  model = create_model(m["name"], num_classes=len(tags), act=m["act"], attn=m["attn"],
                       dtype=jnp.dtype(args.dtype or m["dtype"]), **m["overrides"])
  if lead:
    print(f"sw-zoo eval: {source.described}; {m['name']} act={m['act']} attn={m['attn']} at {source.image_size}px; "
          f"{data_dir} split {args.split!r}, {len(tags)} tags; batch {batch_size}, tta {args.tta}", flush=True)
  result = runner.run(model, source.nested_params(), data_dir, mesh=mesh, split=args.split,
                      global_batch_size=batch_size, image_size=source.image_size, num_tags=len(tags),
                      threshold=threshold, num_bins=args.bins, tta=args.tta,
                      num_threads=args.num_threads or settings.get("num_threads") or 2,
                      prefetch=settings.get("prefetch") or 4, timing_repeats=args.timing_repeats,
                      progress=not args.no_progress)
  rep = report.summarise(result.stats, tags, threshold=threshold)
  suggested = thresholds.suggest(rep.categories, method=args.threshold_method, split=args.split, bins=args.bins)
  num_images = int(result.stats["num_images"])
  summary: dict[str, Any] = {
      "source": source.described, "kind": source.kind, "step": source.step, "model": m["name"],
      "data_dir": data_dir, "split": args.split, "images": num_images, "num_tags": len(tags),
      "threshold": threshold, "bins": args.bins, "tta": args.tta, "batch_size": batch_size,
      "eval_images_per_s": result.forward_images_per_s,
      "eval_pass_images_per_s": num_images / result.seconds if result.seconds > 0 else None,
  }
  if source.train_summary and "train_images_per_s" in source.train_summary:
    summary["train_images_per_s"] = source.train_summary["train_images_per_s"]
  summary.update(rep.categories[report.ALL])  # top level = all tags, as the trainer's summary
  summary["categories"] = rep.categories
  summary["thresholds"] = suggested
  if not lead:
    return 0

  from sw_zoo.data.atomic_file import atomic_write_text

  os.makedirs(out_dir, exist_ok=True)
  atomic_write_text(os.path.join(out_dir, "eval_summary.json"), json.dumps(_json_safe(summary), indent=2) + "\n")
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(report.PER_TAG_COLUMNS)
  writer.writerows(report.per_tag_rows(rep, tags))
  atomic_write_text(os.path.join(out_dir, "per_tag.csv"), buffer.getvalue())
  thresholds.write(os.path.join(out_dir, "thresholds.json"), suggested)
  written = ["eval_summary.json", "per_tag.csv", "thresholds.json"]
  if not args.no_plots:
    written += [os.path.basename(p) for p in plots.write_all(rep, tags, out_dir, threshold=threshold)]
  if source.bundle_config and thresholds.update_bundle(source.bundle_config, suggested):
    print(f"Updated the thresholds in {source.bundle_config} ({args.threshold_method})")

  print(report.category_table(rep.categories, threshold=threshold))
  speed = f"{result.forward_images_per_s:.1f} img/s forward" if result.forward_images_per_s else "forward not timed"
  print(f"{num_images} images, {speed}; suggested thresholds ({args.threshold_method}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in suggested["by_category"].items()))
  print(f"Wrote {', '.join(written)} to {out_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
