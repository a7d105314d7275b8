"""Macro/micro-F1 of the whole own-data workflow, timed: prepare -> train for N minutes -> `sw-zoo tag`
on unseen images -> score the captions it wrote against the true ones.

    python benchmarks/emoji_folder.py --out /tmp/emoji        # a real-image set (Noto emoji + CLDR)
    python benchmarks/own_data_f1.py --folder /tmp/emoji --config configs/own_data.py --minutes 5 15
    python benchmarks/own_data_f1.py --synthetic 3000 --config configs/demo.py --minutes 5 15

--folder holds train/ and test/ kohya-style sub-folders (img.png + img.txt). --synthetic N makes them
from the built-in synthetic generator (N train + N/5 test images, 96 px, its ratings left out) so
that set goes through the same folder workflow. Each run trains with `--config.budget_minutes=M`
(the trainer fixes its steps so it ends within M minutes, evaluations included), copies the test
images alone into a fresh folder, tags it with the run's bundle (its own tuned thresholds), and
scores every vocabulary tag: micro-F1 over all (image, tag) decisions, macro-F1 = mean per-tag
F1 over tags with at least one positive test image. Results go to <work>/results.jsonl; a table
and each tag's F1 are printed.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.logged_command import run_logged  # noqa: E402

from sw_zoo.data.dataset_info import read_dataset_info, selected_tags_path  # noqa: E402
from sw_zoo.data.image_files import IMAGE_EXTENSIONS  # noqa: E402
from sw_zoo.data.vocab import read_selected_tags  # noqa: E402

PY = sys.executable


_run = functools.partial(run_logged, who="own_data_f1")


def synthetic_folder(out: str, num_train: int) -> str:
  """The synthetic generator's train / validation splits written out as train/ and test/ folders."""
  from array_record.python import array_record_module
  from sw_zoo.data.records import decode_record
  shards = os.path.join(out, "shards")
  os.makedirs(out, exist_ok=True)
  _run([PY, "-m", "sw_zoo.cli", "synthetic", "--out", shards, "--num-train", str(num_train),
        "--num-val", str(max(1, num_train // 5)), "--image-size", "96", "--seed", "7",
        "--no-progress"], os.path.join(out, "synthetic.log"))
  vocab = read_selected_tags(selected_tags_path(shards))
  info = read_dataset_info(shards)
  for split, folder in (("train", "train"), ("validation", "test")):
    os.makedirs(os.path.join(out, folder), exist_ok=True)
    for shard in info["splits"][split]["shards"]:
      reader = array_record_module.ArrayRecordReader(os.path.join(shards, shard))
      for raw in reader.read_all():
        rec = decode_record(raw)
        name = os.path.join(out, folder, f"{rec['id']:06d}")
        with open(name + ".png", "wb") as f:  # the bytes are PNG or JPEG; PIL reads either
          f.write(rec["image"])
        tags = [vocab[i].name for i in rec["labels"] if vocab[i].category != 9]
        with open(name + ".txt", "w") as f:
          f.write(", ".join(tags))
      reader.close()
  return out


def read_captions(folder: str) -> dict[str, set[str]]:
  out = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in IMAGE_EXTENSIONS:
      path = os.path.join(folder, stem + ".txt")
      text = open(path).read() if os.path.exists(path) else ""
      out[stem] = {t.strip() for t in text.split(",") if t.strip()}
  return out


def score(truth: dict[str, set[str]], pred: dict[str, set[str]], tags: list[str]) -> dict:
  y = np.array([[t in truth[k] for t in tags] for k in truth], bool)
  p = np.array([[t in pred.get(k, ()) for t in tags] for k in truth], bool)
  tp, fp, fn = (y & p).sum(0), (~y & p).sum(0), (y & ~p).sum(0)
  per_tag = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
  present = y.sum(0) > 0
  return {
      "micro_f1": float(2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)),
      "macro_f1": float(per_tag[present].mean()) if present.any() else 0.0,
      "tags_scored": int(present.sum()),
      "per_tag_f1": {t: round(float(f), 3) for t, f, ok in zip(tags, per_tag, present) if ok},
      "test_images": len(truth),
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--folder", help="folder with train/ and test/ captioned image folders")
  src.add_argument("--synthetic", type=int, help="make such a folder from N synthetic train images")
  ap.add_argument("--config", default="configs/own_data.py")
  ap.add_argument("--minutes", type=float, nargs="+", default=[5.0, 15.0])
  ap.add_argument("--work", default="/tmp/own_data_f1", help="scratch folder (datasets, runs, logs)")
  ap.add_argument("--label", default="", help="name for this configuration in the results")
  ap.add_argument("overrides", nargs="*", help="extra trainer flags, e.g. --config.init.checkpoint=X")
  args = ap.parse_args(argv)
  os.makedirs(args.work, exist_ok=True)

  if args.synthetic:
    folder = os.path.join(args.work, f"synthetic_{args.synthetic}")
    if not os.path.exists(os.path.join(folder, "test")):
      synthetic_folder(folder, args.synthetic)
  else:
    folder = os.path.abspath(args.folder)
  for sub in ("train", "test"):
    if not os.path.isdir(os.path.join(folder, sub)):
      sys.exit(f"own_data_f1: {folder} has no {sub}/ folder")
  dataset = os.path.join(args.work, os.path.basename(folder.rstrip("/")) + "_prepared")
  prep_s = _run([PY, "-m", "sw_zoo.cli", "prepare", "folder", os.path.join(folder, "train"),
                 "--out", dataset, "--max-side", "128", "--no-progress"],
                os.path.join(args.work, "prepare.log"))
  tags = [t.name for t in read_selected_tags(selected_tags_path(dataset)) if t.category != 9]
  truth = read_captions(os.path.join(folder, "test"))
  label = args.label or os.path.splitext(os.path.basename(args.config))[0]
  print(f"{folder}: prepared in {prep_s:.0f} s; {len(tags)} tags, {len(truth)} test images")

  for minutes in args.minutes:
    name = f"{label}_{os.path.basename(folder.rstrip('/'))}_{minutes:g}min"
    workdir = os.path.join(args.work, "runs", name)
    if os.path.exists(workdir):
      shutil.rmtree(workdir)
    train_s = _run([PY, "-m", "sw_zoo.train", "--config", args.config, "--workdir", workdir,
                    f"--config.data.dir={dataset}", f"--config.budget_minutes={minutes}",
                    "--config.wandb.mode=disabled", *args.overrides],
                   os.path.join(args.work, name + ".train.log"))
    tagged = os.path.join(args.work, "tagged", name)
    if os.path.exists(tagged):
      shutil.rmtree(tagged)
    os.makedirs(tagged)
    for stem in truth:
      for ext in IMAGE_EXTENSIONS:
        if os.path.exists(os.path.join(folder, "test", stem + ext)):
          shutil.copy(os.path.join(folder, "test", stem + ext), tagged)
    tag_s = _run([PY, "-m", "sw_zoo.cli", "tag", tagged, "--model", os.path.join(workdir, "bundle"),
                  "--no-progress"], os.path.join(args.work, name + ".tag.log"))
    result = score(truth, read_captions(tagged), tags)
    result.update(label=label, dataset=folder, minutes=minutes, train_wall_s=round(train_s, 1),
                  tag_wall_s=round(tag_s, 1), config=args.config, overrides=args.overrides)
    with open(os.path.join(args.work, "results.jsonl"), "a") as f:
      f.write(json.dumps(result) + "\n")
    worst = sorted(result["per_tag_f1"].items(), key=lambda kv: kv[1])[:6]
    print(f"{name}: macro-F1 {result['macro_f1']:.3f}  micro-F1 {result['micro_f1']:.3f}  "
          f"(train {train_s / 60:.1f} min, tag {tag_s:.0f} s; lowest: "
          + ", ".join(f"{t} {f:.2f}" for t, f in worst) + ")", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
