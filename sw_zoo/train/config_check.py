"""Up-front validation of a training ConfigDict: every problem is reported with the key that
holds it, before any device time or dataset work is spent."""
from __future__ import annotations

import re
from typing import Any

from sw_zoo.data.augment_spec import parse_spec as parse_augment_spec
from sw_zoo.sharding import RULE_SETS, resolve_rules
from sw_zoo.data.balance import LOSS_WEIGHT_METHODS
from sw_zoo.data.sampling import parse_stages
from sw_zoo.evaluation.thresholds import TUNE_METHODS
from sw_zoo.train.early_stop import METRICS as EARLY_STOP_METRICS
from sw_zoo.train.losses import LOSS_NAMES, ROBUST_MODES
from sw_zoo.train.optimizer import OPTIMIZERS, SCHEDULES
from sw_zoo.train.writer import WANDB_MODES

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = ("eca", "se", "none")



class ConfigError(ValueError):
  pass


def _is_regex(value) -> bool:
  re.compile(value)  # re.error is a ValueError: reported as a bad value
  return isinstance(value, str)


def get_key(config: Any, key: str):
  """config['a']['b'] for 'a.b'; ConfigError naming the key when it is missing."""
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key} is missing")
    node = node[part]
  return node


def validate(config: Any) -> None:
  """Raises ConfigError listing every bad key (not just the first)."""
  from sw_zoo.models import ACTIVATIONS, list_models  # the model zoo is the source of truth

  problems: list[str] = []

  def check(key: str, ok, expected: str):
    try:
      value = get_key(config, key)
    except ConfigError as e:
      problems.append(str(e))
      return
    try:
      good = ok(value)
    except (TypeError, ValueError):
      good = False
    if not good:
      problems.append(f"config.{key} = {value!r}: expected {expected}")

  positive_int = lambda v: isinstance(v, int) and v > 0
  check("seed", lambda v: isinstance(v, int), "an int")
  check("batch_size", positive_int, "a positive int")
  check("total_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
  check("total_epochs", lambda v: v >= 0, "a number >= 0")
  if "total_steps" in config and "total_epochs" in config and not (config.total_steps or config.total_epochs):
    problems.append("config.total_steps and config.total_epochs are both 0: set one to say how long to train")
  check("log_every_steps", positive_int, "a positive int")
  check("eval_every_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: once per epoch)")
  check("mesh", lambda v: len(v) == 2 and all(len(a) == 2 for a in v), "[('data', n), ('fsdp', m)]")
  check("data.dir", lambda v: isinstance(v, str) and v, "a dataset directory")
  check("data.image_size", lambda v: isinstance(v, int) and v >= 32, "an int >= 32")
  check("data.num_threads", lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
  check("data.prefetch", lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
  check("data.num_workers", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "an int >= 0 (0: reader threads only)")
  check("model.name", lambda v: v in list_models(), f"one of {list_models()}")
  check("model.act", lambda v: v in ACTIVATIONS, f"one of {sorted(ACTIVATIONS)}")
  check("model.attn", lambda v: v in ATTENTION, f"one of {ATTENTION}")
  check("model.dtype", lambda v: v in DTYPES, f"one of {DTYPES}")
  check("model.drop_path_rate", lambda v: 0 <= v < 1, "a number in [0, 1)")
  check("model.remat", lambda v: isinstance(v, bool), "True or False")
  check("loss.name", lambda v: v in LOSS_NAMES, f"one of {LOSS_NAMES}")
  _check_heads(config, check, problems)
  check("loss.label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)")
  check("loss.asl_gamma_neg", lambda v: v >= 0, "a number >= 0")
  check("loss.asl_gamma_pos", lambda v: v >= 0, "a number >= 0")
  check("loss.asl_clip", lambda v: 0 <= v < 1, "a number in [0, 1)")
  check("loss.focal_gamma", lambda v: v >= 0, "a number >= 0")
  check("loss.focal_alpha", lambda v: v < 0 or 0 <= v <= 1, "a number in [0, 1], or < 0 for none")
  check("param_sharding", lambda v: v in RULE_SETS, f"one of {tuple(RULE_SETS)}")
  if "sharding_rules" in config:
    try:
      resolve_rules("replicated", config.sharding_rules)
    except (ValueError, TypeError) as e:
      problems.append(f"config.sharding_rules = {config.sharding_rules!r}: {e}")
  check("peak_flops_per_device", lambda v: v >= 0, "a number >= 0 (0: look up the device kind)")
  check("loss_weights.method", lambda v: v in LOSS_WEIGHT_METHODS, f"one of {LOSS_WEIGHT_METHODS}")
  check("loss_weights.clip", lambda v: v == 0 or v >= 1, "0 (unbounded) or a number >= 1")
  check("mix.mixup_alpha", lambda v: v >= 0, "a number >= 0 (0 disables MixUp)")
  check("mix.cutmix_alpha", lambda v: v >= 0, "a number >= 0 (0 disables CutMix)")
  check("mix.switch_prob", lambda v: 0 <= v <= 1, "a probability")
  check("mix.prob", lambda v: 0 <= v <= 1, "a probability")
  synthetic = (config.get("data") or {}).get("synthetic") or {}
  if "box" in synthetic:
    check("data.synthetic.box", lambda v: isinstance(v, bool), "True or False")
  if "correlated_noise" in synthetic:
    check("data.synthetic.correlated_noise", lambda v: 0 <= v < 1, "a probability in [0, 1) (0: clean labels)")
  check("data.repeat_factor_threshold", lambda v: v >= 0, "a tag frequency >= 0 (0 disables over-sampling)")
  check("data.max_repeat", lambda v: v == 0 or v >= 1, "0 (no cap) or a number >= 1 (appearances per epoch)")
  check("data.tag_cap", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "an int >= 0 (images per over-represented tag per epoch; 0: off)")
  problems += _sampling_problems(config)
  if "data" in config and "augment_spec" in config.data:
    try:
      parse_augment_spec(config.data.augment_spec.to_dict())
    except (ValueError, KeyError, TypeError) as e:
      problems.append(f"config.data.augment_spec: {e}")
  check("optim.name", lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}")
  check("optim.schedule", lambda v: v in SCHEDULES, f"one of {SCHEDULES}")
  check("optim.lr", lambda v: v > 0, "a number > 0")
  check("optim.warmup_epochs", lambda v: v >= 0, "a number >= 0")
  check("optim.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
  check("optim.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)")
  check("optim.weight_decay", lambda v: v >= 0, "a number >= 0")
  check("optim.agc_clip", lambda v: v >= 0, "a number >= 0 (0 disables AGC)")
  check("optim.agc_exclude", _is_regex, "a regular expression over param paths")
  check("optim.wd_exclude", _is_regex, "a regular expression over param paths")
  check("optim.eps", lambda v: v > 0, "a number > 0")
  check("optim.onecycle_pct_start", lambda v: 0 < v < 1, "a number in (0, 1)")
  check("optim.onecycle_div_factor", lambda v: v >= 1, "a number >= 1")
  check("optim.onecycle_final_div_factor", lambda v: v >= 1, "a number >= 1")
  check("optim.grad_accum_steps", positive_int, "a positive int")
  check("optim.ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1) (0 disables the EMA)")
  check("optim.plateau.factor", lambda v: 0 <= v < 1, "a number in [0, 1) (LR multiplier per cut; 0 disables)")
  check("optim.plateau.patience", lambda v: isinstance(v, int) and v >= 1,
        "an int >= 1 (evaluations without a gain before each cut)")
  check("optim.plateau.min_delta", lambda v: v >= 0, "a number >= 0")
  check("optim.plateau.min_scale", lambda v: 0 < v <= 1, "a number in (0, 1] (floor on the LR multiplier)")
  check("optim.plateau.metric", lambda v: v in EARLY_STOP_METRICS, f"one of {EARLY_STOP_METRICS}")
  check("init.checkpoint", lambda v: isinstance(v, str), "a checkpoint path or ''")
  check("init.freeze", _is_regex, "a regular expression over param paths, or ''")
  check("init.unfreeze_at", lambda v: 0 <= v < 1, "a fraction of the run in [0, 1) (0: frozen throughout)")
  init = config.get("init") or {}
  if (init.get("unfreeze_at") or 0) > 0 and not init.get("freeze"):
    problems.append(f"config.init.unfreeze_at={init['unfreeze_at']} needs config.init.freeze: it says when "
                    "the params matching that regex start training")
  check("eval.count", lambda v: isinstance(v, int) and v >= 0,
        "an int >= 0 (evaluations spread over the run; 0: every eval_every_steps)")
  check("checkpoint.keep_best", lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
  check("eval.num_sample_predictions", lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
  check("eval.threshold", lambda v: 0 < v < 1, "a number in (0, 1)")
  check("eval.batch_size", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: batch_size)")
  check("eval.tune_thresholds", lambda v: v in TUNE_METHODS, f"one of {TUNE_METHODS}")
  check("budget_minutes", lambda v: v >= 0, "a number of minutes >= 0 (0: no budget)")
  check("early_stop.patience", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: never stop early)")
  check("early_stop.metric", lambda v: v in EARLY_STOP_METRICS, f"one of {EARLY_STOP_METRICS}")
  check("early_stop.min_delta", lambda v: v >= 0, "a number >= 0")
  early = config.get("early_stop") or {}
  if isinstance(early.get("patience"), int) and early.get("patience") > 0 and config.checkpoint.keep_best < 1:
    problems.append(f"config.early_stop.patience={early['patience']} needs config.checkpoint.keep_best >= 1: "
                    "a run that stops early ends with its best evaluated checkpoint, which keep_best keeps")
  check("eval.per_tag_min_count", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: per category only)")
  check("checkpoint.every_steps", positive_int, "a positive int")
  check("checkpoint.max_to_keep", positive_int, "a positive int")
  check("wandb.mode", lambda v: v in WANDB_MODES, f"one of {WANDB_MODES}")
  check("profile.steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: no profile)")
  check("profile.skip_steps", lambda v: isinstance(v, int) and v >= 0,
        "an int >= 0 (steps run before the trace starts; the first one compiles)")
  check("profile.all_processes", lambda v: isinstance(v, bool), "True or False")
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))


def _check_heads(config: Any, check, problems: list[str]) -> None:
  """model.heads / pool / het and the losses that go with them (loss.robust*, loss.box_*)."""
  from sw_zoo.models.heads import POOLS, check_heads
  from sw_zoo.models.spec import heads_of

  def heads_ok(value) -> bool:
    check_heads(heads_of(value))
    return True
  check("model.heads", heads_ok, "a comma-separated list with exactly one of tags / heteroscedastic_tags, "
        "and optionally box")
  model = config.get("model") or {}
  if "pool" in model:
    check("model.pool", lambda v: v in POOLS, f"one of {POOLS}")
    check("model.pool_heads", lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
  if "het" in model:
    check("model.het.rank", lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
    check("model.het.samples", lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
    check("model.het.temperature", lambda v: v > 0, "a number > 0")
    check("model.het.noise_scale", lambda v: v >= 0, "a number >= 0")
  loss = config.get("loss") or {}
  if "robust" in loss:
    check("loss.robust", lambda v: v in ROBUST_MODES, f"one of {ROBUST_MODES}")
    adaptive = loss.get("robust") == "adaptive"
    check("loss.robust_alpha", lambda v: (0 < v < 2) if adaptive else v == v,
          "a number in (0, 2) for the adaptive loss" if adaptive else "a number")
    check("loss.robust_scale", lambda v: v > 0, "a number > 0")
    check("loss.robust_lr", lambda v: v > 0, "a number > 0")
  if "box_weight" in loss:
    check("loss.box_weight", lambda v: v >= 0, "a number >= 0")
    check("loss.box_beta", lambda v: v >= 0, "a number >= 0 (0: plain L1)")
  try:
    wants_box = "box" in heads_of(model.get("heads", "tags"))
  except TypeError:
    return  # reported above
  mix = config.get("mix") or {}
  if wants_box and (mix.get("mixup_alpha") or mix.get("cutmix_alpha")):
    problems.append(f"config.model.heads={model['heads']!r} has a box head, but config.mix mixes images "
                    "(mixup_alpha / cutmix_alpha), which leaves no single box to predict: set both to 0")


def _number(value) -> float:
  """A config number, or 0 for anything else (its own check reports the bad type)."""
  return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _sampling_problems(config: Any) -> list[str]:
  """config.data.stages parses, and the sampling options that only work together are set together."""
  data = config.get("data") or {}
  threshold, cap = _number(data.get("repeat_factor_threshold")), _number(data.get("tag_cap"))
  problems = []
  if _number(data.get("max_repeat")) > 0 and threshold <= 0:
    problems.append(f"config.data.max_repeat={data['max_repeat']} needs config.data.repeat_factor_threshold > 0: "
                    "it caps the repeat factors that threshold gives")
  spec = data.get("stages", "")
  try:
    stages = parse_stages(spec)
  except ValueError as e:
    return problems + [f"config.data.stages = {spec!r}: {e}"]
  balanced_stage = any(s.sampling == "balanced" for s in stages)
  if balanced_stage and threshold <= 0 and cap <= 0:
    problems.append(f"config.data.stages = {spec!r} has a 'balanced' stage but nothing balances it: set "
                    "config.data.repeat_factor_threshold and/or config.data.tag_cap")
  elif stages and not balanced_stage and (threshold > 0 or cap > 0):
    # Silently ignoring them would report a balanced run that never was.
    problems.append(f"config.data.stages = {spec!r} has no 'balanced' stage, so config.data.repeat_factor_threshold "
                    "/ tag_cap would have no effect: add one (e.g. 'balanced:2epochs,all') or set them to 0")
  return problems


def check_devices(config: Any, num_devices: int) -> None:
  """Batch sizes that the devices (and gradient accumulation) divide."""
  accum = config.optim.grad_accum_steps
  problems = []
  if config.batch_size % (num_devices * accum):
    problems.append(f"config.batch_size={config.batch_size} is not divisible by {num_devices} devices x "
                    f"config.optim.grad_accum_steps={accum}")
  eval_bs = config.eval.batch_size or config.batch_size
  if eval_bs % num_devices:
    problems.append(f"config.eval.batch_size={eval_bs} is not divisible by {num_devices} devices")
  if problems:
    raise ConfigError("; ".join(problems))


def check_freeze(config: Any, abstract_params: Any) -> None:
  """`config.init.freeze` must match some params but not all of them."""
  from sw_zoo.train import optimizer

  if not config.init.freeze:
    return
  frozen, total = optimizer.frozen_count(abstract_params, config.init.freeze)
  if frozen in (0, total):
    raise ConfigError(
        f"config.init.freeze={config.init.freeze!r} matches {'no' if not frozen else 'every'} param; "
        f"param paths look like {next(iter(optimizer.param_paths(abstract_params).values()))!r}")


def _keys(node: Any, prefix: str = "") -> list[str]:
  out = []
  for key in node.keys():
    out.append(prefix + key)
    child = node[key]
    if hasattr(child, "keys") and callable(child.keys):
      out += _keys(child, prefix + key + ".")
  return out


def check_override_keys(config: Any, keys: list[str]) -> None:
  """Every `--config.KEY` names a key the config has: ConfigError listing all unknown keys at once,
  each with the closest known spelling."""
  import difflib

  known = _keys(config)
  problems = []
  for key in keys:
    if key in known:
      continue
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    problems.append(f"config.{key}" + (f" (did you mean config.{close[0]}?)" if close else ""))
  if problems:
    raise ConfigError(f"unknown config key{'s' if len(problems) > 1 else ''}: " + ", ".join(problems))
