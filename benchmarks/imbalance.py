"""The class-imbalance options against none, on the built-in synthetic dataset (issue 17, item 4).

    python benchmarks/imbalance.py                            # every option, 800 steps each
    python benchmarks/imbalance.py --steps 300 --options none,tag_cap

Each option trains configs/demo.py (tiny NFNet, 96 px, batch 64, AdamW, cosine LR) for the same
number of steps on the same synthetic dataset (generated once into --work), as
`python -m sw_zoo.train` with the option's --config overrides, then evaluates the final weights
on the validation split with `sw-zoo eval` at the run's threshold (0.4). Printed per option:
macro-F1 and micro-F1 over all tags; rare F1 = mean per-tag F1 over the rare tags (the least
frequent third of tags by train count) that have validation positives; rare AP the same for
average precision (threshold-free, so it separates ranking from calibration: sampling and loss
weights move scores against the fixed threshold); each also as a ratio to 'none'. Results go to
<work>/results.jsonl.

'constant' is the control for 'plateau' (ReduceLROnPlateau needs a flat schedule to act on; both
evaluate 8 times). Same seed everywhere, one run per option: differences of a few percent are
within run-to-run noise on this dataset.
"""
from __future__ import annotations

import argparse
import functools
import csv
import json
import math
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.logged_command import run_logged  # noqa: E402

PY = sys.executable
BALANCED = {"data.repeat_factor_threshold": 0.05, "data.max_repeat": 3.0}
CAP = {"data.tag_cap": 500}
PLATEAU_EVALS = {"eval.count": 8, "optim.schedule": "constant"}


def options(steps: int) -> dict[str, dict[str, object]]:
  """Option name -> --config overrides (besides the shared ones in `train`)."""
  return {
      "none": {},
      "log_ratio": {"loss_weights.method": "log_ratio"},
      "repeat+max_repeat": BALANCED,
      "tag_cap": CAP,
      "staged": {**BALANCED, **CAP, "data.stages": f"balanced:{max(1, round(0.4 * steps))}steps,all"},
      "constant": PLATEAU_EVALS,
      "plateau": {**PLATEAU_EVALS, "optim.plateau.factor": 0.5, "optim.plateau.patience": 1,
                  "optim.plateau.min_delta": 0.002, "optim.plateau.metric": "macro_f1"},
  }


_run = functools.partial(run_logged, who="imbalance")


def make_dataset(work: str, num_train: int, num_val: int) -> str:
  data = os.path.join(work, f"synthetic_{num_train}_{num_val}")
  if not os.path.exists(os.path.join(data, "dataset.json")):
    _run([PY, "-m", "sw_zoo.cli", "synthetic", "--out", data, "--num-train", str(num_train), "--num-val",
          str(num_val), "--image-size", "128", "--seed", "0", "--no-progress"], os.path.join(work, "synthetic.log"))
  return data


def rare_tags(data: str) -> np.ndarray:
  """Indices of the least frequent third of tags by train count (ties broken by index)."""
  from sw_zoo.data import pipeline
  from sw_zoo.data.dataset_info import read_dataset_info

  _, indices = pipeline.read_split_labels(data, "train")
  counts = np.bincount(indices, minlength=read_dataset_info(data)["num_labels"])
  return np.sort(np.argsort(counts, kind="stable")[:math.ceil(len(counts) / 3)])


def train(name: str, overrides: dict[str, object], *, data: str, work: str, steps: int) -> dict:
  workdir = os.path.join(work, "runs", name)
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  shared = {"data.dir": data, "data.synthetic.enabled": False, "total_epochs": 0.0, "total_steps": steps,
            "eval.count": 1, "log_every_steps": 100, "checkpoint.every_steps": steps, "wandb.mode": "disabled"}
  flags = [f"--config.{k}={v}" for k, v in {**shared, **overrides}.items()]
  train_s = _run([PY, "-m", "sw_zoo.train", "--config", "configs/demo.py", "--workdir", workdir, *flags],
                 os.path.join(work, name + ".train.log"))
  out = os.path.join(workdir, "eval")
  _run([PY, "-m", "sw_zoo.cli", "eval", workdir, "--out", out, "--no-plots", "--timing-repeats", "0",
        "--no-progress"], os.path.join(work, name + ".eval.log"))
  summary = json.load(open(os.path.join(out, "eval_summary.json")))
  with open(os.path.join(out, "per_tag.csv")) as f:
    rows = list(csv.DictReader(f))
  final = json.load(open(os.path.join(workdir, "eval_summary.json")))
  return {"option": name, "overrides": overrides, "steps": steps, "train_s": round(train_s, 1),
          "macro_f1": summary["macro_f1"], "micro_f1": summary["micro_f1"], "lr_scale": final.get("lr_scale"),
          "per_tag": [(int(r["index"]), int(r["count"]), float(r["f1"] or "nan"), float(r["ap"] or "nan"))
                      for r in rows]}


def rare_scores(result: dict, rare: np.ndarray) -> tuple[float, float]:
  by_index = {i: (support, f1, ap) for i, support, f1, ap in result["per_tag"]}
  scored = [by_index[i] for i in rare if by_index[i][0] > 0]
  return float(np.mean([f1 for _, f1, _ in scored])), float(np.nanmean([ap for _, _, ap in scored]))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--work", default="/tmp/sw_zoo_imbalance", help="scratch folder (dataset, runs, logs)")
  ap.add_argument("--steps", type=int, default=800, help="training steps per option (batch 64)")
  ap.add_argument("--num-train", type=int, default=10_000)
  ap.add_argument("--num-val", type=int, default=2_000)
  ap.add_argument("--options", default="", help="comma-separated subset of the options (default: all)")
  args = ap.parse_args(argv)
  os.makedirs(args.work, exist_ok=True)
  table = options(args.steps)
  chosen = [o.strip() for o in args.options.split(",") if o.strip()] or list(table)
  unknown = sorted(set(chosen) - set(table))
  if unknown:
    sys.exit(f"imbalance: unknown options {unknown}; known: {list(table)}")
  if "none" not in chosen:
    chosen.insert(0, "none")  # the baseline every ratio is against

  start = time.perf_counter()
  data = make_dataset(args.work, args.num_train, args.num_val)
  rare = rare_tags(data)
  print(f"{data}: {args.num_train} train / {args.num_val} validation images; rare = {len(rare)} least frequent "
        f"tags by train count; {args.steps} steps of 64 per option", flush=True)
  results = []
  with open(os.path.join(args.work, "results.jsonl"), "a") as log:
    for name in chosen:
      result = train(name, table[name], data=data, work=args.work, steps=args.steps)
      result["rare_f1"], result["rare_ap"] = rare_scores(result, rare)
      log.write(json.dumps({k: v for k, v in result.items() if k != "per_tag"}) + "\n")
      log.flush()
      results.append(result)
      print(f"  {name}: macro-F1 {result['macro_f1']:.4f}  micro-F1 {result['micro_f1']:.4f}  rare F1 "
            f"{result['rare_f1']:.4f}  rare AP {result['rare_ap']:.4f}  ({result['train_s']:.0f} s)", flush=True)

  base = results[0]
  keys = ("macro_f1", "micro_f1", "rare_f1", "rare_ap")
  print("\n| option | macro-F1 | micro-F1 | rare F1 | rare AP | macro / none | micro / none | rare F1 / none | "
        "rare AP / none | train wall |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    values = " | ".join(f"{r[k]:.4f}" for k in keys)
    ratios = " | ".join(f"{r[k] / base[k]:.3f}x" if base[k] > 0 else "n/a" for k in keys)
    print(f"| {r['option']} | {values} | {ratios} | {r['train_s']:.0f} s |")
  print(f"\nTotal {time.perf_counter() - start:.0f} s. Overrides: "
        + "; ".join(f"{r['option']}: {r['overrides'] or '-'}" for r in results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
