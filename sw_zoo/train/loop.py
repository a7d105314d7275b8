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
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from sw_zoo import export, metrics, sharding
from sw_zoo.data import balance, dataset_info, mixing, pipeline, vocab
from sw_zoo.models import create_model
from sw_zoo.train import config_check, losses, optimizer, state_sharding, steps, throughput, warm_start
from sw_zoo.train.checkpointing import Checkpointer, abstract_with_shardings
from sw_zoo.train.preemption import StopRequest
from sw_zoo.train.writer import MetricWriter


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def ensure_dataset(config: Any) -> str:
  """Returns the dataset directory, generating the synthetic dataset there if asked to and it
  is not complete yet (dataset.json is written last, so its presence means complete)."""
  data_dir = config.data.dir if "://" in config.data.dir else os.path.abspath(config.data.dir)
  marker = epath.Path(data_dir) / "dataset.json"
  if not marker.exists() and not config.data.synthetic.enabled:
    raise FileNotFoundError(
        f"config.data.dir={config.data.dir!r}: no dataset.json in {data_dir}. Prepare shards with "
        "data_prep, or set config.data.synthetic.enabled=True to generate the built-in dataset.")

  def generate():
    from data_prep import synthetic  # the generator is only needed on first use

    s = config.data.synthetic
    log(f"Generating the synthetic dataset in {data_dir} (first run only) ...")
    synthetic.generate(data_dir, num_train=s.num_train, num_val=s.num_val, image_size=s.image_size,
                       seed=s.seed, drop_tag_fraction=s.drop_tag_fraction)

  if jax.process_index() == 0 and not marker.exists():
    generate()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    # Every process meets here, including those that already saw dataset.json: a process that
    # skipped the barrier would enter the next collective while process 0 still waits.
    multihost_utils.sync_global_devices("synthetic dataset ready")
    if not marker.exists():  # hosts with their own disks; the generator is deterministic
      generate()
  return data_dir


def _steps_from(epochs: float, steps_value: int, steps_per_epoch: int) -> int:
  return int(steps_value) if steps_value > 0 else int(math.ceil(epochs * steps_per_epoch))


def evaluate(eval_fn, params, config: Any, data_dir: str, mesh, image_size: int, split: str = "validation",
             sample_fn=None) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
  """Streams one pass over `split`; returns the metrics and, when `sample_fn` is given, the
  first global batch's leading images with their labels and predicted probabilities.

  The eval dataset pads every process to the same number of batches (masked rows), so the
  sharded eval steps line up across hosts."""
  batches = pipeline.make_eval_dataset(
      data_dir, split=split, global_batch_size=config.eval.batch_size or config.batch_size,
      image_size=image_size, process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch)
  total, samples = None, None
  for local in batches:
    local = {k: local[k] for k in ("image", "labels", "mask")}
    batch = sharding.global_batch(local, mesh)
    counts = eval_fn(params, batch)
    total = counts if total is None else jax.tree.map(jnp.add, total, counts)
    if sample_fn is not None and samples is None:
      probs = np.asarray(jax.device_get(sample_fn(params, batch["image"])))
      n = min(len(probs), int(local["mask"].sum()))  # process 0's rows lead the global batch
      samples = {"image": local["image"][:n], "labels": local["labels"][:n], "probs": probs[:n]}
  return metrics.f1_scores(jax.device_get(total)), samples


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final validation metrics plus
  'step', 'interrupted' and throughput figures."""
  # ---- Setup -----------------------------------------------------------------------------
  config_check.validate(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local path or gs://...
  mesh = sharding.make_mesh(config.mesh)
  n_dev, n_proc = jax.device_count(), jax.process_count()
  accum = config.optim.grad_accum_steps
  if config.batch_size % (n_dev * accum):
    raise config_check.ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by {n_dev} devices x "
        f"config.optim.grad_accum_steps={accum}")
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
  if jax.process_index() == 0:
    # The run's config next to its checkpoints: what eval / export rebuild the model from.
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  log(f"sw_zoo: {n_proc} process(es), {n_dev} device(s), mesh {dict(mesh.shape)}; dataset {data_dir}: "
      f"{num_train} train images, {num_labels} tags; {total_steps} steps of {config.batch_size} "
      f"({total_steps / steps_per_epoch:.1f} epochs)")

  model = create_model(config.model.name, num_classes=num_labels, act=config.model.act,
                       attn=None if config.model.attn == "none" else config.model.attn,
                       dtype=jnp.dtype(config.model.dtype), drop_path_rate=config.model.drop_path_rate)
  schedule = optimizer.make_schedule(config.optim, total_steps, warmup_steps)
  tx = optimizer.make_optimizer(config.optim, schedule, freeze=config.init.freeze)

  # ---- State: initialised straight into its shardings, or restored from the workdir --------
  init_fn = functools.partial(steps.init_state, model, tx, image_size=image_size, seed=config.seed,
                              ema=config.optim.ema_decay > 0)
  abstract_state = jax.eval_shape(init_fn)
  param_sh = state_sharding.params_shardings(model, mesh, config.param_sharding)
  state_shardings = state_sharding.state_shardings(abstract_state, param_sh, mesh)
  if config.init.freeze:
    frozen, total = optimizer.frozen_count(abstract_state.params, config.init.freeze)
    if frozen in (0, total):
      raise config_check.ConfigError(
          f"config.init.freeze={config.init.freeze!r} matches {'no' if not frozen else 'every'} param; "
          f"param paths look like {next(iter(optimizer.param_paths(abstract_state.params).values()))!r}")
  train_ds = pipeline.make_train_dataset(
      data_dir, split="train", global_batch_size=config.batch_size, image_size=image_size,
      seed=config.seed, process_index=jax.process_index(), process_count=n_proc,
      augment=config.data.augment, augment_spec=config.data.augment_spec.to_dict(),
      repeat_factor_threshold=config.data.repeat_factor_threshold or None,
      num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch)
  train_iter = iter(train_ds)
  ckpt = Checkpointer(workdir, every_steps=config.checkpoint.every_steps,
                      max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save,
                      keep_best=config.checkpoint.keep_best)
  restored = ckpt.restore(abstract_with_shardings(abstract_state, state_shardings), train_iter)
  if restored is None and config.init.checkpoint:
    source, described = warm_start.read_params(config.init.checkpoint, use_ema=config.init.use_ema)
    copied, fresh = warm_start.match_params(source, abstract_state.params, new_head=config.init.new_head)
    state = jax.jit(lambda o: init_fn(params_override=o), out_shardings=state_shardings)(copied)
    log(f"Initialised {config.model.name} from {described}: {len(copied)} arrays copied"
        + (f", {len(fresh)} new ({', '.join(fresh)})" if fresh else ""))
  elif restored is None:
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
      functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.make_loss(config.loss),
                        schedule=schedule, mix_fn=mix_fn, tag_weights=tag_weights, accum_steps=accum,
                        micro_batch_sharding=NamedSharding(mesh, P(None, sharding.BATCH_AXES)),
                        ema_decay=config.optim.ema_decay, ema_warmup=config.optim.ema_warmup,
                        skip_nonfinite=config.optim.skip_nonfinite),
      in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, repl), donate_argnums=(0,))
  eval_params_sh = state_shardings.eval_params()
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, threshold=config.eval.threshold),
                    in_shardings=(eval_params_sh, batch_sh), out_shardings=repl)
  writer = MetricWriter(workdir, config)
  sample_fn = None
  if config.eval.num_sample_predictions and writer.wants_predictions:
    sample_fn = jax.jit(lambda p, images: steps.predict_probs(p, images, model=model)[:config.eval.num_sample_predictions],
                        in_shardings=(eval_params_sh, batch_sh), out_shardings=repl)
  run_eval = functools.partial(evaluate, eval_fn, config=config, data_dir=data_dir, mesh=mesh,
                               image_size=image_size, sample_fn=sample_fn)
  peak = throughput.peak_flops_per_device(jax.devices()[0], config.peak_flops_per_device)
  step_fn, step_flops = None, None

  # ---- Loop ----------------------------------------------------------------------------------
  stop = StopRequest()
  step = int(jax.device_get(state.step))
  first_step = step
  pending: list[dict[str, jax.Array]] = []
  window_start, window_steps = time.perf_counter(), 0
  timed_images, timed_seconds = 0, 0.0
  val: dict[str, float] = {}

  def validate_now(step: int) -> dict[str, float]:
    val, samples = run_eval(state.eval_params())
    writer.write(step, val, prefix="val/")
    if samples is not None:
      writer.log_predictions(step, samples, tags.names, threshold=config.eval.threshold)
    return val

  try:
    while step < total_steps:
      if stop.should_stop(step):
        break
      batch = sharding.global_batch(next(train_iter), mesh)
      if step_fn is None:
        # Lowered once by hand: the same compiled executable runs every step, and its
        # unpartitioned HLO gives the FLOPs per step for MFU.
        lowered = train_fn.lower(state, batch)
        step_flops = throughput.lowered_flops(lowered)
        step_fn = lowered.compile()
      state, stats = step_fn(state, batch)
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
        scalars["skipped_steps"] = float(fetched[-1]["skipped_steps"])
        scalars["images_per_s"] = images_per_s
        scalars.update(throughput.utilisation(step_flops, window_steps / elapsed, n_dev, peak))
        writer.write(step, scalars, prefix="train/")
        extra = f"  MFU {scalars['mfu']:.2%}" if "mfu" in scalars else ""
        if scalars["skipped_steps"]:
          extra += f"  skipped {int(scalars['skipped_steps'])} non-finite steps"
        log(f"step {step:6d}/{total_steps}  loss {scalars['loss']:.4f}  lr {scalars['lr']:.2e}  "
            f"grad_norm {scalars['grad_norm']:.3f}  {images_per_s:.1f} img/s{extra}")
        pending.clear()
        window_start, window_steps = time.perf_counter(), 0
      val_now = None
      if step % eval_every == 0 and step < total_steps and stop.signal_name is None:
        val = val_now = validate_now(step)
        log(f"step {step:6d}  val micro-F1 {val['micro_f1']:.4f}  macro-F1 {val['macro_f1']:.4f}")
        window_start = time.perf_counter()  # eval time is not training throughput
      # Evaluated steps are saved (with their F1) so the best checkpoint can be kept. The last
      # step is saved after the final evaluation instead, so it is ranked too.
      if step < total_steps:
        ckpt.save(step, state, train_iter, metrics=val_now,
                  force=val_now is not None and config.checkpoint.keep_best > 0)
    interrupted = step < total_steps
    if interrupted:
      ckpt.save(step, state, train_iter, force=True)
      ckpt.wait()
      log(f"Stopped by {stop.signal_name} at step {step}/{total_steps}; checkpoint saved in {ckpt.directory}. "
          "Run the same command again to resume.")
      return {"step": step, "interrupted": True}

    # ---- Final evaluation --------------------------------------------------------------------
    val = validate_now(step)
    ckpt.save(step, state, train_iter, metrics=val, force=True)  # a no-op if this step was saved
    result = {"step": step, "interrupted": False, "threshold": config.eval.threshold, **val}
    if timed_seconds > 0:
      result["train_images_per_s"] = timed_images / timed_seconds
    skipped = int(jax.device_get(state.skipped_steps))
    if skipped:
      result["skipped_steps"] = skipped
    if jax.process_index() == 0:
      (epath.Path(workdir) / "eval_summary.json").write_text(json.dumps(result, indent=2))
    # The run's usable artefact: <workdir>/bundle (load_pretrained, sw-zoo tag / export).
    bundle_dir = export.write_run_bundle(workdir, state.eval_params(), config, tags, step=step)
    if bundle_dir:
      log(f"Wrote the model bundle {bundle_dir}")
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
