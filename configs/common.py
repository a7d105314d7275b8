"""Defaults shared by every experiment config, and the `file.py:key=value,flag` argument parser.

An experiment file is `get_config(arg=None)` returning a ConfigDict built on `base_config()`;
every knob lives here with a comment, so `--config.x.y=v` can reach any of them.
"""
from __future__ import annotations

import ml_collections

from sw_zoo.data.augment import SPEC_DEFAULTS


def parse_arg(arg: str | None, **defaults):
  """'runlocal,res=384' -> ConfigDict(runlocal=True, res=384, ...defaults).

  Values are typed after the defaults (bool flags may appear bare), so typos fail loudly.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise KeyError(f"config argument {key!r} is not one of {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      parsed[key] = (value.lower() in ("1", "true", "yes")) if sep else True
    else:
      parsed[key] = kind(value)
  return parsed


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Device mesh: ('data', n) x ('fsdp', m); -1 takes all remaining devices.
  c.mesh = [("data", -1), ("fsdp", 1)]
  c.batch_size = 1024  # global, across all hosts and devices
  # Duration: total_steps when > 0, else total_epochs over the train split.
  c.total_steps = 0
  c.total_epochs = 100.0
  c.log_every_steps = 100
  c.eval_every_steps = 0  # 0: evaluate once per epoch

  c.data = ml_collections.ConfigDict()
  c.data.dir = "data/synthetic"  # holds dataset.json, selected_tags.csv and the shards
  c.data.image_size = 320  # training / eval resolution (images are resized to this)
  c.data.augment = True  # False: no training augmentation at all
  # Host-side augmentation (sw_zoo/data/augment.py): `ops` in order, e.g.
  # "letterbox,rrc,flip,rotate,cutout"; the other keys parameterise the ops. The default
  # "shift,flip" never rescales (the synthetic dataset's size tags depend on scale).
  c.data.augment_spec = ml_collections.ConfigDict(dict(SPEC_DEFAULTS))
  # Repeat-factor over-sampling of images with rare tags (LVIS-style): an image is repeated
  # max(1, sqrt(t / f)) times per epoch for its rarest tag of frequency f. 0 disables.
  c.data.repeat_factor_threshold = 0.0
  c.data.num_threads = 16  # grain reader threads per process
  c.data.prefetch = 8  # batches prefetched per process
  # If set and data.dir has no dataset yet, the built-in synthetic dataset is generated there.
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.enabled = False
  c.data.synthetic.num_train = 10000
  c.data.synthetic.num_val = 1000
  c.data.synthetic.image_size = 128
  c.data.synthetic.seed = 0
  c.data.synthetic.drop_tag_fraction = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "l0"  # a key of sw_zoo.models.VARIANTS
  c.model.act = "silu"  # relu | silu | gelu | hswish
  c.model.attn = "eca"  # eca | se | none
  c.model.dtype = "bfloat16"  # compute dtype; params stay float32
  c.model.drop_path_rate = 0.1

  c.loss = "bce"
  # Per-tag loss weights from training tag counts (sw_zoo/data/balance.py):
  # none | inverse_sqrt | inverse | effective_num; clip bounds max/min weight (0: unbounded).
  c.loss_weights = ml_collections.ConfigDict()
  c.loss_weights.method = "none"
  c.loss_weights.beta = 0.999
  c.loss_weights.clip = 10.0

  # Device-side MixUp / CutMix (SW-CV-ModelZoo used MixUp 0.2). 0 disables each.
  c.mix = ml_collections.ConfigDict()
  c.mix.mixup_alpha = 0.0
  c.mix.cutmix_alpha = 0.0
  c.mix.switch_prob = 0.5  # with both on: probability of CutMix for an example
  c.mix.prob = 1.0  # probability that an example is mixed at all

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"  # sgd | adamw
  c.optim.lr = 0.1  # peak learning rate
  c.optim.schedule = "cosine"  # cosine | constant
  c.optim.warmup_epochs = 1.0
  c.optim.warmup_steps = 0  # overrides warmup_epochs when > 0
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 5e-5
  c.optim.agc_clip = 0.01  # adaptive gradient clipping threshold; 0 disables

  c.eval = ml_collections.ConfigDict()
  c.eval.threshold = 0.4  # score threshold for the F1 logged during training
  c.eval.batch_size = 0  # global; 0: same as batch_size

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.max_to_keep = 3
  c.checkpoint.async_save = True

  c.wandb = ml_collections.ConfigDict()
  c.wandb.mode = "offline"  # offline | online | disabled (WANDB_MODE in the environment wins)
  c.wandb.project = "sw_zoo"
  c.wandb.entity = ""
  c.wandb.name = ""  # default: the workdir's name
  c.wandb.group = ""
  c.wandb.tags = ()
  return c
