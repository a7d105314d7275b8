"""`train_and_evaluate(config, workdir)`: the whole training run, top to bottom.

Sections: setup (mesh, data, model) -> state (init or resume) -> compiled steps -> loop
(train, log, eval, checkpoint, stop on signal) -> final evaluation. Rerunning with the same
workdir resumes from the latest checkpoint, data iterator included.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sw_zoo import metrics, sharding
from sw_zoo.data import balance, dataset_info, mixing, pipeline, vocab
from sw_zoo.models import create_model
from sw_zoo.train import config_check, losses, optimizer, steps
from sw_zoo.train.checkpointing import Checkpointer, abstract_with_shardings
from sw_zoo.train.preemption import StopRequest
from sw_zoo.train.writer import MetricWriter


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def ensure_dataset(config: Any) -> str:
  """Returns the dataset directory, generating the synthetic dataset there if asked to and it
  is not complete yet (dataset.json is written last, so its presence means complete)."""
  data_dir = os.path.abspath(config.data.dir)
  if os.path.exists(os.path.join(data_dir, "dataset.json")):
    return data_dir
  if not config.data.synthetic.enabled:
    raise FileNotFoundError(
        f"config.data.dir={config.data.dir!r}: no dataset.json in {data_dir}. Prepare shards with "
        "data_prep, or set config.data.synthetic.enabled=True to generate the built-in dataset.")
  if jax.process_index() == 0:
    from data_prep import synthetic  # the generator is only needed on first use

    s = config.data.synthetic
    log(f"Generating the synthetic dataset in {data_dir} (first run only) ...")
    synthetic.generate(data_dir, num_train=s.num_train, num_val=s.num_val, image_size=s.image_size,
                       seed=s.seed, drop_tag_fraction=s.drop_tag_fraction)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("synthetic dataset ready")
  return data_dir


def _steps_from(epochs: float, steps_value: int, steps_per_epoch: int) -> int:
  return int(steps_value) if steps_value > 0 else int(math.ceil(epochs * steps_per_epoch))


def evaluate(eval_fn, params, config: Any, data_dir: str, mesh, image_size: int,
             split: str = "validation") -> dict[str, float]:
  """Streams one pass over `split`. The eval dataset pads every process to the same number of
  batches (masked rows), so the sharded eval steps line up across hosts."""
  batches = pipeline.make_eval_dataset(
      data_dir, split=split, global_batch_size=config.eval.batch_size or config.batch_size,
      image_size=image_size, process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch)
  total = None
  for local in batches:
    local = {k: local[k] for k in ("image", "labels", "mask")}
    counts = eval_fn(params, sharding.global_batch(local, mesh))
    total = counts if total is None else jax.tree.map(jnp.add, total, counts)
  return metrics.f1_scores(jax.device_get(total))


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final validation metrics plus
  'step', 'interrupted' and throughput figures."""
  # ---- Setup -----------------------------------------------------------------------------
  config_check.validate(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  n_dev, n_proc = jax.device_count(), jax.process_count()
  if config.batch_size % n_dev:
    raise config_check.ConfigError(f"config.batch_size={config.batch_size} is not divisible by {n_dev} devices")
  eval_bs = config.eval.batch_size or config.batch_size
  if eval_bs % n_dev:
    raise config_check.ConfigError(f"config.eval.batch_size={eval_bs} is not divisible by {n_dev} devices")

  data_dir = ensure_dataset(config)
  info = dataset_info.read_dataset_info(data_dir)
  tags = vocab.read_selected_tags(os.path.join(data_dir, "selected_tags.csv"))
  num_labels = len(tags)
  num_train = info["splits"]["train"]["num_examples"]
  steps_per_epoch = max(1, num_train // config.batch_size)
  total_steps = _steps_from(config.total_epochs, config.total_steps, steps_per_epoch)
  warmup_steps = _steps_from(config.optim.warmup_epochs, config.optim.warmup_steps, steps_per_epoch)
  eval_every = config.eval_every_steps or steps_per_epoch
  image_size = config.data.image_size
  log(f"sw_zoo: {n_proc} process(es), {n_dev} device(s), mesh {dict(mesh.shape)}; dataset {data_dir}: "
      f"{num_train} train images, {num_labels} tags; {total_steps} steps of {config.batch_size} "
      f"({total_steps / steps_per_epoch:.1f} epochs)")

  model = create_model(config.model.name, num_classes=num_labels, act=config.model.act,
                       attn=None if config.model.attn == "none" else config.model.attn,
                       dtype=jnp.dtype(config.model.dtype), drop_path_rate=config.model.drop_path_rate)
  schedule = optimizer.make_schedule(config.optim, total_steps, warmup_steps)
  tx = optimizer.make_optimizer(config.optim, schedule)

  # ---- State: initialised straight into its shardings, or restored from the workdir --------
  init_fn = functools.partial(steps.init_state, model, tx, image_size=image_size, seed=config.seed)
  abstract_state = jax.eval_shape(init_fn)
  state_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state)
  train_ds = pipeline.make_train_dataset(
      data_dir, split="train", global_batch_size=config.batch_size, image_size=image_size,
      seed=config.seed, process_index=jax.process_index(), process_count=n_proc,
      augment=config.data.augment, augment_spec=config.data.augment_spec.to_dict(),
      repeat_factor_threshold=config.data.repeat_factor_threshold or None,
      num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch)
  train_iter = iter(train_ds)
  ckpt = Checkpointer(workdir, every_steps=config.checkpoint.every_steps,
                      max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save)
  restored = ckpt.restore(abstract_with_shardings(abstract_state, state_shardings), train_iter)
  if restored is None:
    state = jax.jit(init_fn, out_shardings=state_shardings)()
    log(f"Initialised {config.model.name} ({_count(state.params) / 1e6:.2f}M params) from seed {config.seed}")
  else:
    start, state = restored
    log(f"Resumed from checkpoint at step {start} in {ckpt.directory}")

  # ---- Compiled steps ------------------------------------------------------------------------
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  mix_fn = None
  if config.mix.mixup_alpha or config.mix.cutmix_alpha:
    mix_fn = functools.partial(mixing.mix_batch, mixup_alpha=config.mix.mixup_alpha,
                               cutmix_alpha=config.mix.cutmix_alpha, switch_prob=config.mix.switch_prob,
                               prob=config.mix.prob)
  tag_weights = None
  if config.loss_weights.method != "none":
    tag_weights = jnp.asarray(balance.tag_loss_weights(
        tags.counts, num_train, method=config.loss_weights.method, beta=config.loss_weights.beta,
        clip=config.loss_weights.clip or None))
  train_fn = jax.jit(
      functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.LOSSES[config.loss], schedule=schedule,
                        mix_fn=mix_fn, tag_weights=tag_weights),
      in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, repl), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, threshold=config.eval.threshold),
                    in_shardings=(state_shardings.params, batch_sh), out_shardings=repl)
  run_eval = functools.partial(evaluate, eval_fn, config=config, data_dir=data_dir, mesh=mesh,
                               image_size=image_size)

  # ---- Loop ----------------------------------------------------------------------------------
  writer = MetricWriter(workdir, config)
  stop = StopRequest()
  step = int(jax.device_get(state.step))
  first_step = step
  pending: list[dict[str, jax.Array]] = []
  window_start, window_steps = time.perf_counter(), 0
  timed_images, timed_seconds = 0, 0.0
  val: dict[str, float] = {}
  try:
    while step < total_steps:
      if stop.should_stop(step):
        break
      batch = sharding.global_batch(next(train_iter), mesh)
      state, stats = train_fn(state, batch)
      step += 1
      window_steps += 1
      pending.append(stats)
      if step % config.log_every_steps == 0 or step == total_steps:
        fetched = jax.device_get(pending)  # the one host sync per log window
        elapsed = time.perf_counter() - window_start
        images_per_s = window_steps * config.batch_size / elapsed
        if step - window_steps > first_step:  # the first window includes compilation
          timed_images += window_steps * config.batch_size
          timed_seconds += elapsed
        scalars = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[-1]}
        scalars["lr"] = float(fetched[-1]["lr"])
        scalars["images_per_s"] = images_per_s
        writer.write(step, scalars, prefix="train/")
        log(f"step {step:6d}/{total_steps}  loss {scalars['loss']:.4f}  lr {scalars['lr']:.2e}  "
            f"grad_norm {scalars['grad_norm']:.3f}  {images_per_s:.1f} img/s")
        pending.clear()
        window_start, window_steps = time.perf_counter(), 0
      if step % eval_every == 0 and step < total_steps and stop.signal_name is None:
        val = run_eval(state.params)
        writer.write(step, val, prefix="val/")
        log(f"step {step:6d}  val micro-F1 {val['micro_f1']:.4f}  macro-F1 {val['macro_f1']:.4f}")
        window_start = time.perf_counter()  # eval time is not training throughput
      ckpt.save(step, state, train_iter)
    interrupted = step < total_steps
    if interrupted:
      ckpt.save(step, state, train_iter, force=True)
      ckpt.wait()
      log(f"Stopped by {stop.signal_name} at step {step}/{total_steps}; checkpoint saved in {ckpt.directory}. "
          "Run the same command again to resume.")
      return {"step": step, "interrupted": True}

    # ---- Final evaluation --------------------------------------------------------------------
    if ckpt.latest_step() != step:
      ckpt.save(step, state, train_iter, force=True)
    val = run_eval(state.params)
    writer.write(step, val, prefix="val/")
    result = {"step": step, "interrupted": False, "threshold": config.eval.threshold, **val}
    if timed_seconds > 0:
      result["train_images_per_s"] = timed_images / timed_seconds
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "eval_summary.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    log(f"Final (step {step}): micro-F1 {val['micro_f1']:.4f}  macro-F1 {val['macro_f1']:.4f}  "
        f"P {val['micro_precision']:.4f}  R {val['micro_recall']:.4f} at threshold {config.eval.threshold}")
    return result
  finally:
    stop.restore()
    ckpt.wait()
    ckpt.close()
    writer.close()


def _count(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
