"""The extra output heads against the plain tag head, trained on CPU at equal steps (issue 17).

    python benchmarks/heads.py                               # both parts, 1000 steps per run
    python benchmarks/heads.py --parts box --steps 300
    python benchmarks/heads.py --parts het --noise 0.3 --rounds 2

(a) box: a synthetic set with each image's largest-object box (`data_prep.synthetic`, box=True).
    Runs: `tags` (baseline), `tags,box` (loss.box_weight 10, the default) and `tags,box` with
    box_weight 50. Printed: micro/macro-F1 at the run's threshold, training images/s (the
    trainer's steady-state `train_images_per_s`, input pipeline included, see (c)) and its ratio
    to the baseline, box mean IoU and IoU>=0.5 accuracy on the validation split.
(b) het: the same images with correlated, input-dependent noise on the TRAIN labels only
    (`correlated_noise`, data_prep/synthetic_noise.py: whole objects missed with all their tags,
    colours misread); validation labels are clean, so the scores measure the truth. Runs: `tags`
    (baseline), `heteroscedastic_tags` (rank 6, 16 samples) and `heteroscedastic_tags` with
    loss.robust=adaptive and model.pool=attention, and to tell those three apart, `tags` with
    loss.robust=adaptive and `tags` with model.pool=attention. The box set's `tags` run is the same images
    and validation split with clean train labels, printed as the clean-label reference. Printed:
    micro/macro-F1 at the threshold, best micro-F1 over thresholds (on the same split, so
    optimistic), mAP and ECE (expected calibration error), each against the noisy-label `tags`
    baseline (ratio, or difference for ECE).
(c) step time: the trainer's images/s above include its input pipeline, which shares the CPU (and
    any other work on the machine), so the head's own cost is also measured in this process: one
    jitted train step per distinct network (named by its first run; the loss options are not in
    it), timed in alternating order over --timing-rounds rounds, as median ms/step and its ratio
    to `tags`.

Every run is configs/demo.py (tiny NFNet, batch 64, AdamW 2e-3, cosine, float32) at --image-size
for exactly --steps steps, as `python -m sw_zoo.train` with the run's --config overrides, then
`sw-zoo eval` of the final weights on the validation split (micro/macro-F1, mAP, ECE, box
scores). Same seed everywhere, and a run repeats exactly (same F1), so --rounds R (each run R
times, the order reversed on every other round, means in the tables) only repeats the trainer's
images/s. How far another seed moves F1 is not measured here: read differences of ~0.01 as noise.
Results go to <work>/results.jsonl.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.logged_command import run_logged  # noqa: E402

PY = sys.executable

BOX_RUNS = {
    "tags": {"model.heads": "tags"},
    "tags,box": {"model.heads": "tags,box"},
    "tags,box w50": {"model.heads": "tags,box", "loss.box_weight": 50.0},
}
HET_RUNS = {
    "tags": {"model.heads": "tags"},
    "het": {"model.heads": "heteroscedastic_tags"},
    "het+adaptive+attn": {"model.heads": "heteroscedastic_tags", "loss.robust": "adaptive",
                          "model.pool": "attention"},
    # Which of the three moved the last run: each of the other two alone on the plain head.
    "tags+adaptive": {"model.heads": "tags", "loss.robust": "adaptive"},
    "tags+attn": {"model.heads": "tags", "model.pool": "attention"},
}


_run = functools.partial(run_logged, who="heads")


def make_dataset(work: str, name: str, args, **options) -> tuple[str, dict]:
  from data_prep import synthetic

  out = os.path.join(work, name)
  info = synthetic.generate(out, num_train=args.num_train, num_val=args.num_val,
                            image_size=args.image_size, seed=0, workers=2, progress=False, **options)
  return out, info


def train_and_eval(part: str, name: str, overrides: dict, *, data: str, work: str, args,
                   round_index: int) -> dict:
  tag = f"{part}_{name.replace(',', '+').replace(' ', '_')}_r{round_index}"
  workdir = os.path.join(work, "runs", tag)
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  steps = args.steps
  shared = {"data.dir": data, "data.synthetic.enabled": False, "data.image_size": args.image_size,
            "model.name": args.model, "total_epochs": 0.0, "total_steps": steps, "eval.count": 1,
            "log_every_steps": max(1, steps // 4), "checkpoint.every_steps": steps,
            "wandb.mode": "disabled"}
  flags = [f"--config.{k}={v}" for k, v in {**shared, **overrides}.items()]
  train_s = _run([PY, "-m", "sw_zoo.train", "--config", "configs/demo.py", "--workdir", workdir, *flags],
                 os.path.join(work, tag + ".train.log"))
  out = os.path.join(workdir, "eval")
  _run([PY, "-m", "sw_zoo.cli", "eval", workdir, "--out", out, "--timing-repeats", "0", "--no-progress",
        *([] if args.plots else ["--no-plots"])], os.path.join(work, tag + ".eval.log"))
  summary = json.load(open(os.path.join(out, "eval_summary.json")))
  final = json.load(open(os.path.join(workdir, "eval_summary.json")))
  result = {"part": part, "run": name, "round": round_index, "overrides": overrides, "steps": steps,
            "train_wall_s": round(train_s, 1), "train_images_per_s": final.get("train_images_per_s"),
            "train_input_wait": final.get("train_input_wait")}
  for key in ("micro_f1", "macro_f1", "best_f1", "map", "ece", "elementwise_accuracy", "box_mean_iou",
              "box_iou50_accuracy"):
    result[key] = summary.get(key)
  return result


TIMING_STEPS = 8  # timed steps per model and round in (c)


def step_times(runs: dict[str, dict], *, model: str, image_size: int, num_tags: int, rounds: int,
               steps_per_round: int = TIMING_STEPS, batch: int = 64) -> dict[str, list[float]]:
  """Seconds per training step of each run's model, measured in this process in alternating order
  (round r runs the list forwards or backwards), so every model sees the same machine load.
  The step is the model's forward + backward and an AdamW update, as in sw_zoo/train/steps.py, with
  plain BCE over the tags (+ box_weight x smooth-L1 for a box head; the adaptive robust loss's
  elementwise terms are left out) on a fixed random batch."""
  import jax
  import jax.numpy as jnp
  import optax

  from configs import demo
  from sw_zoo.models.spec import spec_from_run_config, training_options

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, image_size, image_size, 3)), jnp.float32)
  labels = jnp.asarray(rng.random((batch, num_tags)) < 0.1, jnp.float32)
  corners = np.sort(rng.random((batch, 2, 2)), axis=1)
  boxes = jnp.asarray(corners.transpose(0, 2, 1).reshape(batch, 4)[:, [0, 2, 1, 3]], jnp.float32)
  steps, states = {}, {}
  for name, overrides in runs.items():
    config = demo.get_config()
    config.model.name = model
    config.update_from_flattened_dict({k: v for k, v in overrides.items() if k.startswith(("model.", "loss."))})
    with_box = "box" in config.model.heads
    net = spec_from_run_config(config, num_tags).create(**training_options(config))
    rngs = {k: jax.random.key(i) for i, k in enumerate(("dropout", "drop_path", "heteroscedastic"))}
    params = net.init({"params": jax.random.key(9), **rngs}, images[:2], train=False)["params"]
    tx = optax.adamw(2e-3, weight_decay=0.05)
    box_weight, box_beta = float(config.loss.box_weight), float(config.loss.box_beta)

    def step(params, opt_state, key, net=net, tx=tx, with_box=with_box, box_weight=box_weight, box_beta=box_beta):
      keys = dict(zip(rngs, jax.random.split(key, len(rngs))))

      def loss_of(p):
        out = net.apply({"params": p}, images, train=True, rngs=keys, return_features=with_box)
        logits = out["logits"] if with_box else out
        loss = optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1)
        if with_box:
          loss = loss + box_weight * optax.huber_loss(out["box"], boxes, delta=box_beta).sum(-1) / box_beta
        return loss.mean()
      loss, grads = jax.value_and_grad(loss_of)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    steps[name] = jax.jit(step, donate_argnums=(0, 1))
    states[name] = (params, tx.init(params))
  key = jax.random.key(0)
  times: dict[str, list[float]] = {name: [] for name in runs}
  names = list(runs)
  for r in range(-1, rounds):  # round -1 compiles and warms up, untimed
    for name in (names if r % 2 == 0 else names[::-1]):
      params, opt_state = states[name]
      start = time.perf_counter()
      for _ in range(steps_per_round if r >= 0 else 2):
        key, sub = jax.random.split(key)
        params, opt_state, loss = steps[name](params, opt_state, sub)
      loss.block_until_ready()
      if r >= 0:
        times[name].append((time.perf_counter() - start) / steps_per_round)
      states[name] = (params, opt_state)
  return times


def print_step_table(times: dict[str, list[float]], base: str, steps_per_round: int = TIMING_STEPS) -> None:
  print(f"\n(c) step time, interleaved in one process ({len(times[base])} rounds x {steps_per_round} "
        f"steps per model, batch 64; baseline `{base}`)\n")
  print("| model | median ms/step | / baseline (median) | per-round ratio min - max |")
  print("|---|---|---|---|")
  b = np.array(times[base])
  for name, t in times.items():
    ratios = np.array(t) / b  # each round's two measurements were taken close together
    print(f"| {name} | {1000 * np.median(t):.0f} | {np.median(t) / np.median(b):.3f}x | "
          f"{ratios.min():.3f} - {ratios.max():.3f} |")


def _mean(results: list[dict], key: str) -> float:
  values = [r[key] for r in results if r.get(key) is not None]
  return float(np.mean(values)) if values else float("nan")


def run_part(part: str, table: dict, data: str, work: str, args, log) -> dict[str, list[dict]]:
  names = list(table)
  by_name: dict[str, list[dict]] = {n: [] for n in names}
  for r in range(args.rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      result = train_and_eval(part, name, table[name], data=data, work=work, args=args, round_index=r)
      log.write(json.dumps(result) + "\n")
      log.flush()
      by_name[name].append(result)
      box = (f"  box IoU {result['box_mean_iou']:.4f}  IoU>=0.5 {result['box_iou50_accuracy']:.4f}"
             if result.get("box_mean_iou") is not None else "")
      print(f"  [{part} r{r}] {name}: micro-F1 {result['micro_f1']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
            f"ECE {result['ece']:.4f}  {result['train_images_per_s']:.0f} img/s{box}  "
            f"({result['train_wall_s']:.0f} s)", flush=True)
  return by_name


def _per_round(results: list[dict], key: str, fmt: str) -> str:
  return " / ".join(fmt.format(r[key]) for r in results) if len(results) > 1 else ""


def print_box_table(by_name: dict[str, list[dict]]) -> None:
  base = by_name["tags"]
  print("\n(a) box head, baseline `tags` (same dataset, same steps)\n")
  print("| run | micro-F1 | macro-F1 | micro / tags | macro / tags | train img/s | img/s / tags | "
        "box mean IoU | IoU>=0.5 acc |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, results in by_name.items():
    ips = _mean(results, "train_images_per_s")
    iou, acc = _mean(results, "box_mean_iou"), _mean(results, "box_iou50_accuracy")
    rounds = _per_round(results, "train_images_per_s", "{:.0f}")
    print(f"| {name} | {_mean(results, 'micro_f1'):.4f} | {_mean(results, 'macro_f1'):.4f} | "
          f"{_mean(results, 'micro_f1') / _mean(base, 'micro_f1'):.3f}x | "
          f"{_mean(results, 'macro_f1') / _mean(base, 'macro_f1'):.3f}x | {ips:.0f}"
          + (f" ({rounds})" if rounds else "") + f" | {ips / _mean(base, 'train_images_per_s'):.3f}x | "
          + ("-" if np.isnan(iou) else f"{iou:.4f}") + " | " + ("-" if np.isnan(acc) else f"{acc:.4f}") + " |")


def print_het_table(by_name: dict[str, list[dict]], clean: list[dict] | None) -> None:
  base = by_name["tags"]
  rows = ([("tags, clean train labels (reference)", clean)] if clean else []) + list(by_name.items())
  print("\n(b) heteroscedastic head under correlated train-label noise; clean validation labels; "
        "baseline `tags` on the same noisy labels\n")
  print("| run | micro-F1 | macro-F1 | best micro-F1 | mAP | ECE | micro / tags | macro / tags | "
        "best / tags | mAP / tags | ECE - tags | img/s / tags |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name, results in rows:
    m = {k: _mean(results, k) for k in ("micro_f1", "macro_f1", "best_f1", "map", "ece", "train_images_per_s")}
    b = {k: _mean(base, k) for k in m}
    print(f"| {name} | {m['micro_f1']:.4f} | {m['macro_f1']:.4f} | {m['best_f1']:.4f} | {m['map']:.4f} | "
          f"{m['ece']:.4f} | {m['micro_f1'] / b['micro_f1']:.3f}x | {m['macro_f1'] / b['macro_f1']:.3f}x | "
          f"{m['best_f1'] / b['best_f1']:.3f}x | {m['map'] / b['map']:.3f}x | {m['ece'] - b['ece']:+.4f} | "
          f"{m['train_images_per_s'] / b['train_images_per_s']:.3f}x |")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--work", default="/tmp/sw_zoo_heads", help="scratch folder (datasets, runs, logs)")
  ap.add_argument("--parts", default="box,het", help="comma-separated: box, het")
  ap.add_argument("--steps", type=int, default=1000, help="training steps per run (batch 64)")
  ap.add_argument("--num-train", type=int, default=3000)
  ap.add_argument("--num-val", type=int, default=600)
  ap.add_argument("--image-size", type=int, default=64)
  ap.add_argument("--model", default="tiny", help="tiny or cpu_s")
  ap.add_argument("--noise", type=float, default=0.3, help="correlated_noise of the het part's train labels")
  ap.add_argument("--rounds", type=int, default=1, help="repeat every run this many times (order alternating)")
  ap.add_argument("--plots", action="store_true", help="let `sw-zoo eval` draw its PNGs (box_best_worst.png)")
  ap.add_argument("--timing-rounds", type=int, default=12,
                  help="rounds of the interleaved step-time measurement (c), after the runs; 0 skips it")
  args = ap.parse_args(argv)
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  if not parts or set(parts) - {"box", "het"}:
    sys.exit(f"heads: --parts takes box and/or het, got {args.parts!r}")
  os.makedirs(args.work, exist_ok=True)
  start = time.perf_counter()
  print(f"heads: {args.model} at {args.image_size} px, batch 64, {args.steps} steps per run, "
        f"{args.num_train} train / {args.num_val} validation synthetic images, {args.rounds} round(s); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start", flush=True)
  box_results = het_results = None
  num_tags = None
  with open(os.path.join(args.work, "results.jsonl"), "a") as log:
    if "box" in parts:
      data, info = make_dataset(args.work, f"box_{args.num_train}_{args.image_size}", args, box=True)
      boxes, num_tags = info["splits"]["validation"].get("num_boxes"), info["num_labels"]
      print(f"(a) {data}: {boxes} of {args.num_val} validation images have a box", flush=True)
      box_results = run_part("box", BOX_RUNS, data, args.work, args, log)
    if "het" in parts:
      data, info = make_dataset(args.work, f"noise{args.noise:g}_{args.num_train}_{args.image_size}", args,
                                correlated_noise=args.noise)
      n, num_tags = info["splits"]["train"]["label_noise"], info["num_labels"]
      print(f"(b) {data}: train labels: {n['missed_objects']}/{n['objects']} objects missed "
            f"({n['missed_objects'] / n['objects']:.3f}), {n['confused_colors']} colours misread; "
            f"{n['dropped_tags']}/{n['true_tags']} true non-rating tags dropped "
            f"({n['dropped_tags'] / n['true_tags']:.3f}), {n['added_tags']} wrong tags added", flush=True)
      het_results = run_part("het", HET_RUNS, data, args.work, args, log)
  if box_results:
    print_box_table(box_results)
  if het_results:
    print_het_table(het_results, box_results["tags"] if box_results else None)
  if args.timing_rounds > 0:
    # One model per distinct network: loss.* changes no network (and is not in this step).
    timed, networks = {}, set()
    for name, overrides in [*(BOX_RUNS.items() if box_results else ()), *(HET_RUNS.items() if het_results else ())]:
      network = tuple(sorted((k, v) for k, v in overrides.items() if k.startswith("model.")))
      if network not in networks:
        networks.add(network)
        timed[name] = overrides
    print_step_table(step_times(timed, model=args.model, image_size=args.image_size, num_tags=num_tags,
                                rounds=args.timing_rounds), "tags")
  described = lambda table: "; ".join(  # noqa: E731
      f"{n}: " + " ".join(f"{k}={v}" for k, v in o.items()) for n, o in table.items())
  print(f"\nTotal {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f} at the end. Runs: "
        + ("(a) " + described(BOX_RUNS) if box_results else "")
        + (" | (b) " + described(HET_RUNS) if het_results else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
