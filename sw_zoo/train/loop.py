"""`train_and_evaluate(config, workdir)`: the whole training run, top to bottom.

Sections: setup (checks, mesh, data, model) -> state (init or resume) -> compiled step and the
shared evaluator -> loop (train, then whatever `itstime` says: log, evaluate, checkpoint; stop on
a signal) -> final evaluation and the run's bundle. Rerunning with the same workdir resumes from
the latest checkpoint, data iterator included. The dataset must exist: `sw-zoo train` (the CLI)
generates the built-in synthetic one first when the config asks for it.
"""
from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from sw_zoo import run_dir, storage, sharding
from sw_zoo.data import balance, dataset_info, mixing, pipeline, sampling, vocab
from sw_zoo.evaluation import box_metrics, metrics
from sw_zoo.evaluation import thresholds as thresholds_lib
from sw_zoo.evaluation.evaluator import Evaluator
from sw_zoo.inference import run_bundle
from sw_zoo.models import abstract_params
from sw_zoo.models.spec import remat_compiler_options, spec_from_run_config, training_options
from sw_zoo.train import budget, config_check, losses, optimizer, profiling, recipe, steps, throughput, warm_start
from sw_zoo.train.checkpointing import Checkpointer, abstract_with_shardings
from sw_zoo.train.early_stop import EarlyStop
from sw_zoo.train.periodic import itstime
from sw_zoo.train.plateau import Plateau
from sw_zoo.train.preemption import StopRequest
from sw_zoo.train.writer import MetricWriter


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def dataset_dir(config: Any) -> str:
  """config.data.dir as an absolute path (or URL), checked to hold a complete dataset."""
  data_dir = run_dir.absolute(config.data.dir)
  storage.check_bucket(data_dir)
  if not storage.exists(storage.join(data_dir, dataset_info.DATASET_INFO_FILENAME)):
    raise FileNotFoundError(
        f"config.data.dir={config.data.dir!r}: no {dataset_info.DATASET_INFO_FILENAME} in {data_dir} (not a "
        "complete dataset). Prepare one with `sw-zoo prepare`, or set config.data.synthetic.enabled=True "
        "and start with `sw-zoo train` to generate the built-in dataset.")
  return data_dir


def _steps_from(epochs: float, steps_value: int, steps_per_epoch: int) -> int:
  return int(steps_value) if steps_value > 0 else int(math.ceil(epochs * steps_per_epoch))


def eval_period(config: Any, total_steps: int, steps_per_epoch: int) -> int:
  """Steps between validation passes: eval.count of them spread over the run, else
  eval_every_steps, else one per epoch."""
  count = int(config.eval.get("count", 0) or 0)
  if count > 0:
    return max(1, math.ceil(total_steps / count))
  return config.eval_every_steps or steps_per_epoch


def train_and_evaluate(config: Any, workdir: str, *, recipe_record: dict[str, Any] | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final validation metrics plus
  'step', 'interrupted' and throughput figures. A config that leaves recipe keys open (None:
  configs/own_data.py) has them chosen first (`recipe.resolve`; the CLI does that itself and
  passes what it chose as `recipe_record`)."""
  # ---- Setup: every check before the first write ---------------------------------------------
  started = time.perf_counter()  # a time budget counts from here
  if recipe_record is None:
    recipe_record = recipe.resolve(config, workdir, log=log)
  config_check.validate(config)
  n_dev, n_proc = jax.device_count(), jax.process_count()
  config_check.check_devices(config, n_dev)
  mesh = sharding.make_mesh(config.mesh)
  data_dir = dataset_dir(config)
  info = dataset_info.read_dataset_info(data_dir)
  tags = vocab.read_selected_tags(dataset_info.selected_tags_path(data_dir))
  num_train = info["splits"]["train"]["num_examples"]
  steps_per_epoch = max(1, num_train // config.batch_size)
  total_steps = _steps_from(config.total_epochs, config.total_steps, steps_per_epoch)
  warmup_steps = _steps_from(config.optim.warmup_epochs, config.optim.warmup_steps, steps_per_epoch)
  budget_minutes = float(config.get("budget_minutes", 0.0) or 0.0)
  plan = budget.load(workdir) if budget_minutes > 0 else None
  unfreeze_step = _unfreeze_step(config, total_steps)
  if plan is not None:  # a resumed budget run keeps the total (and schedule) it planned
    total_steps = plan.total_steps
    warmup_steps = plan.warmup_steps if plan.warmup_steps >= 0 else warmup_steps
    unfreeze_step = plan.unfreeze_step if plan.unfreeze_step >= 0 else _unfreeze_step(config, total_steps)
  eval_every = eval_period(config, total_steps, steps_per_epoch)
  image_size = config.data.image_size
  log(f"sw_zoo: {n_proc} process(es), {n_dev} device(s), mesh {dict(mesh.shape)}; dataset {data_dir}: "
      f"{num_train} train images, {len(tags)} tags; {total_steps} steps of {config.batch_size} "
      f"({total_steps / steps_per_epoch:.1f} epochs)")

  model = spec_from_run_config(config, len(tags)).create(**training_options(config))
  with_box = "box" in model.cfg.heads
  if with_box:
    _check_boxes(info, data_dir, config.model.heads)
  schedule = optimizer.make_schedule(config.optim, total_steps, warmup_steps)
  tx = optimizer.make_optimizer(config.optim, schedule, freeze=config.init.freeze, unfreeze_step=unfreeze_step)

  # ---- State: initialised straight into its shardings, or restored from the workdir --------
  init_fn = functools.partial(steps.init_state, model, tx, image_size=image_size, seed=config.seed,
                              ema=config.optim.ema_decay > 0, loss_params=losses.init_loss_params(config.loss, len(tags)),
                              loss_tx=losses.loss_optimizer(config.loss))
  abstract_state = jax.eval_shape(init_fn)
  config_check.check_freeze(config, abstract_state.params)
  rules = sharding.resolve_rules(config.param_sharding, config.sharding_rules)
  state_sh = sharding.state_shardings(
      abstract_state, sharding.param_shardings(abstract_params(model), mesh, rules), mesh)
  # Stage boundaries are steps from step 0, so a budget's plan (made later) does not move them.
  stages = sampling.stage_steps(sampling.parse_stages(config.data.get("stages", "")), steps_per_epoch)
  if stages:
    log(f"Sampling: {sampling.describe(stages)}")
  train_ds = pipeline.make_train_dataset(
      data_dir, split="train", global_batch_size=config.batch_size, image_size=image_size,
      seed=config.seed, process_index=jax.process_index(), process_count=n_proc,
      augment=config.data.augment, augment_spec=config.data.augment_spec.to_dict(),
      repeat_factor_threshold=config.data.repeat_factor_threshold or None,
      max_repeat=config.data.get("max_repeat", 0) or None, tag_cap=config.data.get("tag_cap", 0) or None,
      stages=stages or None, num_threads=config.data.num_threads, prefetch_batches=config.data.prefetch,
      num_workers=config.data.num_workers, with_box=with_box)
  train_iter = iter(train_ds)
  storage.check_bucket(workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local path or gs://...
  early = config.get("early_stop") or {}
  tracker = EarlyStop.load(workdir, metric=early.get("metric", "micro_f1"), patience=early.get("patience", 0),
                           min_delta=early.get("min_delta", 0.0))
  # With early stopping the kept "best" checkpoint is the one the tracker ranks best.
  ckpt = Checkpointer(workdir, every_steps=config.checkpoint.every_steps,
                      max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save,
                      keep_best=config.checkpoint.keep_best,
                      best_metric=tracker.metric if tracker.enabled else "micro_f1")
  state = _restore_or_init(config, ckpt, train_iter, init_fn, abstract_state, state_sh)
  plateau = _plateau(config, workdir, state)
  if jax.process_index() == 0:
    # Written only once the state exists: a refused resume leaves the run's config as it was.
    # eval / export rebuild the model from it.
    storage.write_text(storage.join(workdir, run_dir.CONFIG_FILE), config.to_json_best_effort(indent=2))
    recipe.save(workdir, recipe_record)

  # ---- Compiled step and the shared evaluator ------------------------------------------------
  train_fn = _jitted_train_step(config, model, tx, schedule, tags, num_train, mesh, state_sh)
  train_fn_key = (total_steps, warmup_steps, unfreeze_step)  # the schedule the compiled step has
  writer = MetricWriter(workdir, config)
  evaluator = Evaluator(model, mesh=mesh, num_tags=len(tags), threshold=config.eval.threshold,
                        params_sharding=state_sh.eval_params(), box=with_box,
                        num_samples=config.eval.num_sample_predictions if writer.wants_predictions else 0)

  final_stats: dict[str, Any] = {}

  def validate(step: int) -> dict[str, float]:
    # Steps still queued (dispatch is asynchronous) finish first, so they count as training time
    # and the pass is timed alone.
    jax.block_until_ready(state)
    eval_start = time.perf_counter()
    result = evaluator.run(state.eval_params(), data_dir, split="validation",
                           global_batch_size=config.eval.batch_size or config.batch_size, image_size=image_size,
                           num_threads=config.data.num_threads, prefetch=config.data.prefetch)
    val = metrics.f1_scores(result.stats)
    if with_box:
      val.update(box_metrics.box_scores(result.stats))
    writer.write(step, val, prefix="val/")
    if result.samples is not None:
      writer.log_predictions(step, result.samples, tags.names, threshold=config.eval.threshold)
    final_stats.update(result.stats)  # the last pass's: the bundle's thresholds are tuned on it
    if since is not None:
      since.eval_s.append(time.perf_counter() - eval_start)
      since.paused_s += since.eval_s[-1]
    return val

  peak = throughput.peak_flops_per_device(jax.devices()[0], config.peak_flops_per_device)
  step_fn, step_flops = None, None

  # ---- Loop ----------------------------------------------------------------------------------
  stop = StopRequest()
  step = int(jax.device_get(state.step))
  timer = throughput.StepTimer(config.batch_size, first_step=step)
  profiler = profiling.StepProfiler(config.profile, workdir, first_step=step, pause=timer.paused)
  pending: list[dict[str, jax.Array]] = []
  planning = budget_minutes > 0 and plan is None
  calibration: dict[str, float] = {}
  since: budget.Since | None = None  # timings since the plan, for its revision
  try:
    while step < total_steps and tracker.stopped_at is None and not stop.should_stop(step):
      with profiler.step(step):
        with timer.waiting_for_input():
          batch = sharding.global_batch(next(train_iter), mesh)
        if step_fn is None:
          # Lowered once by hand: the same compiled executable runs every step, and its
          # unpartitioned HLO gives the FLOPs per step for MFU.
          if since is not None:
            jax.block_until_ready(state)  # as for evaluations: queued steps are training time
          lower_start = time.perf_counter()
          lowered = train_fn.lower(state, batch)
          step_flops = throughput.lowered_flops(lowered)
          compile_start = time.perf_counter()
          step_fn = lowered.compile(
              compiler_options=remat_compiler_options(config.model.remat, jax.devices()[0].platform))
          calibration.setdefault("compile_s", time.perf_counter() - compile_start)
          if since is not None:
            since.paused_s += time.perf_counter() - lower_start
        state, stats = step_fn(state, batch)
      step += 1
      timer.step()
      new_plan = False
      if planning:
        # Timing stops within the warm-up and the first quarter of the provisional run, so the
        # steps it times see the LR the planned schedule gives them.
        limit = min(warmup_steps or total_steps, total_steps // 4)
        planned = _calibrate(calibration, step, state, validate, timer, budget_minutes * 60.0, started, limit)
        if planned is not None:
          step_s, eval_s, elapsed_s, compile_s = planned
          total_steps = budget.plan_steps(
              budget_s=budget_minutes * 60.0, elapsed_s=elapsed_s, step_s=step_s, eval_s=eval_s,
              eval_every=eval_every, steps_done=step, recompile_s=compile_s,
              eval_count=int(config.eval.get("count", 0) or 0))
          # A warm-up longer than a tenth of the planned run would leave no room for the decay.
          warmup_steps = min(warmup_steps, max(step, total_steps // 10))
          unfreeze_step = _still_unfrozen(unfreeze_step, _unfreeze_step(config, total_steps), step)
          plan = budget.Plan(budget_minutes, total_steps, step_s, eval_s, step, elapsed_s,
                             replan_at=budget.replan_step(step, total_steps), compile_s=compile_s,
                             warmup_steps=warmup_steps, unfreeze_step=unfreeze_step)
          since = budget.Since(time.perf_counter(), step)
          planning, new_plan = False, True
      elif since is not None and step == plan.replan_at and not plan.replanned:
        total_steps = _revise(plan, since, step, started, eval_every, state)
        unfreeze_step = plan.unfreeze_step = _still_unfrozen(unfreeze_step, _unfreeze_step(config, total_steps), step)
        new_plan = True
      if new_plan:
        if jax.process_index() == 0:
          budget.save(workdir, plan)
        log(f"Planned the run for its {plan.describe()}")
        if (total_steps, warmup_steps, unfreeze_step) != train_fn_key:
          # The schedule for the planned total; the step is compiled again with it.
          schedule = optimizer.make_schedule(config.optim, total_steps, warmup_steps)
          tx = optimizer.make_optimizer(config.optim, schedule, freeze=config.init.freeze, unfreeze_step=unfreeze_step)
          eval_every = eval_period(config, total_steps, steps_per_epoch)
          train_fn = _jitted_train_step(config, model, tx, schedule, tags, num_train, mesh, state_sh)
          train_fn_key, step_fn = (total_steps, warmup_steps, unfreeze_step), None
      profiler.step_done(step, state)
      pending.append(stats)
      if itstime(step, config.log_every_steps, total_steps):
        _log_window(step, total_steps, jax.device_get(pending), timer, writer, step_flops, n_dev, peak,
                    lr_scale=plateau.scale if plateau.enabled else None)
        pending.clear()
      # The final step is evaluated (and saved, ranked by that evaluation) after the loop.
      val = None
      # (Not while timing steps for the budget: the evaluation it times is its own.)
      if itstime(step, eval_every, total_steps, last=False) and stop.signal_name is None and not planning:
        # Queued steps finish outside the pause: they are training time (counted inside it, they
        # made the logged images/s swing several-fold on windows with an evaluation).
        jax.block_until_ready(state)
        with timer.paused():  # eval time is not training throughput
          val = validate(step)
        _log_val(step, val)
        if tracker.enabled:
          tracker.update(step, val)
          if jax.process_index() == 0:
            tracker.save()
        if plateau.enabled:
          if plateau.update(step, val):  # the next steps use the lower LR; this step's checkpoint holds it
            state = state.replace(opt_state=optimizer.set_plateau_scale(state.opt_state, plateau.scale))
            log(f"step {step:6d}  {plateau.describe()}")
          if jax.process_index() == 0:
            plateau.save()
      # Evaluated steps are saved with their F1 when keeping the best checkpoints.
      if not planning and (itstime(step, config.checkpoint.every_steps, total_steps, last=False) or (
          val is not None and config.checkpoint.keep_best > 0)):
        ckpt.save(step, state, train_iter, metrics=val, force=True)
    profiler.close(step, state)  # a run shorter than the profile window still gets its trace, without the eval
    if tracker.stopped_at is not None:
      # Stopped early: the run ends with its best evaluated checkpoint, the one keep_best kept
      # for the highest metric (min_delta only decides what counts as progress).
      ckpt.wait()
      best = ckpt.best_step() or tracker.best_step
      log(f"Stopped early at step {tracker.stopped_at}/{total_steps}: {tracker.describe()}; ending with the "
          f"best evaluated checkpoint, step {best}")
      step, state = ckpt.restore(abstract_with_shardings(abstract_state, state_sh), train_iter, step=best)
    elif step < total_steps:
      ckpt.save(step, state, train_iter, force=True)
      ckpt.wait()
      log(f"Stopped by {stop.signal_name} at step {step}/{total_steps}; checkpoint saved in {ckpt.directory}. "
          "Run the same command again to resume.")
      return {"step": step, "interrupted": True}

    # ---- Final evaluation and the run's bundle -------------------------------------------------
    val = validate(step)
    ckpt.save(step, state, train_iter, metrics=val, force=True)  # a no-op if this step was saved
    result = {"step": step, "interrupted": False, "threshold": config.eval.threshold, **val}
    if tracker.stopped_at is not None:
      result["early_stopped_at"] = tracker.stopped_at
    if plateau.enabled:
      result["lr_scale"] = optimizer.plateau_scale(state.opt_state)  # the final state's multiplier
    if timer.run_images_per_s() is not None:
      result["train_images_per_s"] = timer.run_images_per_s()
      result["train_input_wait"] = timer.run_input_wait()
    skipped = int(jax.device_get(state.skipped_steps))
    if skipped:
      result["skipped_steps"] = skipped
    if jax.process_index() == 0:
      storage.write_text(storage.join(workdir, run_dir.EVAL_SUMMARY_FILE), json.dumps(result, indent=2))
    # The run's usable artefact: <workdir>/bundle (load_pretrained, sw-zoo tag / export).
    # Its thresholds are chosen on this last validation pass (config.eval.tune_thresholds; an
    # older run's config without the key keeps eval.threshold everywhere).
    thresholds = thresholds_lib.tune(
        jax.device_get(final_stats), tags, method=config.eval.get("tune_thresholds", "none"),
        per_tag_min_count=config.eval.get("per_tag_min_count", 0), threshold=config.eval.threshold,
        bins=evaluator.num_bins)
    bundle_dir = run_bundle.write_run_bundle(workdir, state.eval_params(), config, tags, step=step,
                                             thresholds=thresholds)
    if bundle_dir:
      log(f"Wrote the model bundle {bundle_dir}"
          + (f" with {thresholds_lib.describe(thresholds)}" if thresholds else ""))
    log(f"Final (step {step}): micro-F1 {val['micro_f1']:.4f}  macro-F1 {val['macro_f1']:.4f}  "
        f"P {val['micro_precision']:.4f}  R {val['micro_recall']:.4f} at threshold {config.eval.threshold}"
        + (f"; box mean IoU {val['box_mean_iou']:.4f}, IoU>=0.5 {val['box_iou50_accuracy']:.4f}" if with_box else ""))
    return result
  finally:
    profiler.close(step)  # after an error too: the trace up to it may show why
    stop.restore()
    train_iter.close()  # stops grain's worker processes (data.num_workers > 0) now, not at exit
    try:
      ckpt.wait()  # a failed async save is reported here, naming the checkpoint directory
    finally:
      ckpt.close()
      writer.close()


def _plateau(config: Any, workdir: str, state: Any) -> Plateau:
  """The optim.plateau tracker, counting from the evaluations up to the state's step; the LR
  multiplier is the one the (restored) optimizer state holds."""
  cfg = config.optim.get("plateau") or {}
  plateau = Plateau.load(workdir, metric=cfg.get("metric", "micro_f1"), factor=cfg.get("factor", 0.0),
                         patience=cfg.get("patience", 1), min_delta=cfg.get("min_delta", 0.0),
                         min_scale=cfg.get("min_scale", 0.0))
  if plateau.enabled:
    note = plateau.resume(int(jax.device_get(state.step)), optimizer.plateau_scale(state.opt_state))
    if note:
      log(note)
  return plateau


def _restore_or_init(config: Any, ckpt: Checkpointer, train_iter: Any, init_fn: Any, abstract_state: Any,
                     state_sh: Any) -> Any:
  """The run's state, placed in its shardings: resumed from the workdir's latest checkpoint (data
  iterator included), else warm-started from config.init.checkpoint, else freshly initialised."""
  restored = ckpt.restore(abstract_with_shardings(abstract_state, state_sh), train_iter)
  if restored is not None:
    step, state = restored
    log(f"Resumed from checkpoint at step {step} in {ckpt.directory}")
    return state
  if config.init.checkpoint:
    source, described = warm_start.read_params(config.init.checkpoint, use_ema=config.init.use_ema,
                                               model=spec_from_run_config(config, 0))
    copied, fresh = warm_start.match_params(source, abstract_state.params, new_head=config.init.new_head)
    state = jax.jit(lambda o: init_fn(params_override=o), out_shardings=state_sh)(copied)
    log(f"Initialised {config.model.name} from {described}: {len(copied)} arrays copied"
        + (f", {len(fresh)} new ({', '.join(fresh)})" if fresh else ""))
    return state
  state = jax.jit(init_fn, out_shardings=state_sh)()
  log(f"Initialised {config.model.name} ({_count(state.params) / 1e6:.2f}M params) from seed {config.seed}")
  return state


def _jitted_train_step(config: Any, model: Any, tx: Any, schedule: Any, tags: vocab.TagVocab, num_train: int,
                       mesh: Any, state_sh: Any) -> Any:
  """`steps.train_step` with the config's loss, MixUp/CutMix, tag weights, accumulation, EMA and
  NaN guard bound in, jitted over the mesh with the state donated."""
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
  box = {}
  if "box" in model.cfg.heads:
    beta = float(config.loss.box_beta)
    box = dict(box_loss_fn=lambda pred, target: losses.smooth_l1(pred, target, beta),
               box_weight=float(config.loss.box_weight))
  return jax.jit(
      functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.make_loss(config.loss),
                        loss_tx=losses.loss_optimizer(config.loss), **box,
                        schedule=schedule, mix_fn=mix_fn, tag_weights=tag_weights,
                        accum_steps=config.optim.grad_accum_steps,
                        micro_batch_sharding=NamedSharding(mesh, P(None, sharding.BATCH_AXES)),
                        ema_decay=config.optim.ema_decay, ema_warmup=config.optim.ema_warmup,
                        skip_nonfinite=config.optim.skip_nonfinite),
      in_shardings=(state_sh, sharding.batch_sharding(mesh)), out_shardings=(state_sh, sharding.replicated(mesh)),
      donate_argnums=(0,))


def _check_boxes(info: dict[str, Any], data_dir: str, heads: str) -> None:
  """A box head needs boxes to learn from: refused before the first write when the training split
  has none (dataset.json's splits.train.num_boxes, written by `sw-zoo prepare`)."""
  if not dataset_info.num_boxes(info, "train"):
    raise config_check.ConfigError(
        f"config.model.heads={heads!r} has a box head, but the training split of {data_dir} has no boxes "
        "(dataset.json splits.train.num_boxes): prepare it with --box-columns (manifests) or --box-ext (folders), "
        "or generate the synthetic set with config.data.synthetic.box=True")


def _unfreeze_step(config: Any, total_steps: int) -> int:
  at = float(config.init.get("unfreeze_at", 0.0) or 0.0)
  return max(1, round(at * total_steps)) if at > 0 else 0


def _still_unfrozen(old: int, new: int, step: int) -> int:
  """The unfreeze step after a (re)plan moved the total: params already training are never
  frozen again, and a new step already behind us means now."""
  if not old or not new:
    return new
  return old if step >= old else max(new, step)


def _log_val(step: int, val: dict[str, float]) -> None:
  log(f"step {step:6d}  val micro-F1 {val['micro_f1']:.4f}  macro-F1 {val['macro_f1']:.4f}")


def _calibrate(calibration: dict[str, float], step: int, state: Any, validate: Any, timer: Any,
               budget_s: float, started: float, limit: int) -> tuple[float, float, float, float] | None:
  """For a time budget: times `budget.CALIBRATION_STEPS` steps after the first, then enough more
  to fill `budget.CALIBRATION_SHARE` of the budget (the first steps after a compile also wait for
  the input pipeline to fill, so timed alone they overstate the step time), then runs one
  validation pass, ending by step `limit` at the latest (at least CALIBRATION_STEPS more);
  returns (seconds per step, seconds per evaluation, seconds since `started`, seconds to compile
  the step) once known, the same on every process (process 0's figures, so every process also
  times the same steps and plans the same total)."""
  if "t0" not in calibration:
    jax.block_until_ready(state)  # dispatch is asynchronous: time finished steps only
    calibration["t0"], calibration["from"] = time.perf_counter(), step
    return None
  if "until" not in calibration:
    if step - calibration["from"] < budget.CALIBRATION_STEPS:
      return None
    jax.block_until_ready(state)
    first_s = _agreed([(time.perf_counter() - calibration["t0"]) / budget.CALIBRATION_STEPS])[0]
    calibration["until"] = min(step + budget.more_calibration_steps(budget_s, first_s),
                               max(step + budget.CALIBRATION_STEPS, limit))
    calibration["t0"], calibration["from"] = time.perf_counter(), step
  if step < calibration["until"]:
    return None
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - calibration["t0"]) / max(step - calibration["from"], 1)
  with timer.paused():
    eval_start = time.perf_counter()
    val = validate(step)  # a real evaluation, logged like any other
    eval_s = time.perf_counter() - eval_start
  _log_val(step, val)
  step_s, eval_s, elapsed_s, compile_s = _agreed([step_s, eval_s, time.perf_counter() - started,
                                                  calibration["compile_s"]])
  return step_s, eval_s, elapsed_s, compile_s


def _revise(plan: budget.Plan, since: budget.Since, step: int, started: float, eval_every: int,
            state: Any) -> int:
  """The plan's total revised from the steps and evaluations since it was made (process 0's
  timings on every process); updates `plan` and returns its total."""
  jax.block_until_ready(state)  # queued steps are part of the time per step
  now = time.perf_counter()
  eval_s = float(np.median(since.eval_s)) if since.eval_s else plan.eval_s
  step_s, eval_s, elapsed_s = _agreed([since.step_s(now, step), eval_s, now - started])
  total = budget.plan_steps(budget_s=plan.budget_minutes * 60.0, elapsed_s=elapsed_s, step_s=step_s, eval_s=eval_s,
                            eval_every=eval_every, steps_done=step, recompile_s=plan.compile_s)
  plan.step_s, plan.eval_s, plan.elapsed_s, plan.replanned = step_s, eval_s, elapsed_s, True
  if abs(total - plan.total_steps) > budget.REPLAN_TOLERANCE * plan.total_steps:
    plan.total_steps = total
  return plan.total_steps


def _agreed(figures: list[float]) -> list[float]:
  """Process 0's figures on every process (each must plan the same)."""
  values = np.asarray(figures, np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    values = np.asarray(multihost_utils.broadcast_one_to_all(values))
  return [float(v) for v in values]


def _log_window(step: int, total_steps: int, fetched: list[dict[str, Any]], timer: throughput.StepTimer,
                writer: MetricWriter, step_flops: float | None, n_dev: int, peak: float | None,
                lr_scale: float | None = None) -> None:
  """Means of the window's step stats (fetched in one host sync), throughput, input wait (share
  of the window's time spent waiting for batches) and MFU: logged, written to metrics.jsonl / W&B.
  `lr_scale` (optim.plateau's multiplier, which the last step used) adds lr_scale and
  effective_lr = lr x lr_scale; `lr` stays the schedule's."""
  window = timer.close_window(step)
  scalars = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[-1]}
  scalars["lr"] = float(fetched[-1]["lr"])
  if lr_scale is not None:
    scalars["lr_scale"], scalars["effective_lr"] = lr_scale, scalars["lr"] * lr_scale
  scalars["skipped_steps"] = float(fetched[-1]["skipped_steps"])
  scalars["images_per_s"] = window.images_per_s
  scalars["input_wait"] = window.input_wait
  scalars.update(throughput.utilisation(step_flops, window.steps_per_s, n_dev, peak))
  writer.write(step, scalars, prefix="train/")
  extra = f"  MFU {scalars['mfu']:.2%}" if "mfu" in scalars else ""
  if scalars["skipped_steps"]:
    extra += f"  skipped {int(scalars['skipped_steps'])} non-finite steps"
  scaled = f" x {lr_scale:.3g}" if lr_scale is not None and lr_scale != 1.0 else ""
  log(f"step {step:6d}/{total_steps}  loss {scalars['loss']:.4f}  lr {scalars['lr']:.2e}{scaled}  "
      f"grad_norm {scalars['grad_norm']:.3f}  {window.images_per_s:.1f} img/s  "
      f"input wait {window.input_wait:.0%}{extra}")


def _count(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
