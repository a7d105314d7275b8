"""Defaults shared by every experiment config, and the `file.py:key=value,flag` argument parser.

An experiment file is `get_config(arg=None)` returning a ConfigDict built on `base_config()`;
every knob lives here with a comment, so `--config.x.y=v` can reach any of them.
"""
from __future__ import annotations

import ml_collections

from sw_zoo.data.augment_spec import SPEC_DEFAULTS


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
  # Params, optimizer state and EMA: "replicated" (data parallel) or "fsdp" (split over the
  # 'fsdp' mesh axis by the models' logical-axis rules; gathered per layer on use).
  c.param_sharding = "replicated"
  # Rules as data: pairs (logical param axis, mesh axis or None) in priority order that replace
  # param_sharding's rule set when non-empty (sw_zoo.sharding.RULE_SETS shows the built-in ones),
  # e.g. --config.sharding_rules="(('conv_out','fsdp'),('tags','fsdp'))".
  c.sharding_rules = ()
  c.batch_size = 1024  # global, across all hosts and devices
  # Duration: total_steps when > 0, else total_epochs over the train split.
  c.total_steps = 0
  c.total_epochs = 100.0
  c.log_every_steps = 100
  c.eval_every_steps = 0  # 0: evaluate once per epoch
  # > 0: the run's length comes from this many minutes of wall time instead of total_steps /
  # total_epochs: steps are fixed after timing a few steps and one evaluation, so the run,
  # evaluations included, ends within the budget with a complete LR schedule (sw_zoo/train/budget.py).
  c.budget_minutes = 0.0

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
  # Cap on an image's repeat factor (e.g. 4: at most 4 appearances per epoch however rare its
  # tags, so a handful of images cannot fill the epoch); 0: no cap. Needs repeat_factor_threshold.
  c.data.max_repeat = 0.0
  # Under-sampling of over-represented tags: > 0, an image whose tags are ALL in more than tag_cap
  # train images is kept with probability tag_cap / (count of its commonest tag), so such a tag is
  # expected in ~tag_cap images per epoch plus those it shares with rarer tags (always kept, and
  # repeated by repeat_factor_threshold: the under- then over-sampling of sw_zoo/data/balance.py).
  # 0: off.
  c.data.tag_cap = 0
  # Sampling schedule, "SAMPLING:LENGTH,...,SAMPLING": balanced (the three options above) or all
  # (every image once per epoch, reshuffled); LENGTH is "Nsteps" or "Nepochs", counted from step 0
  # (so a budget_minutes plan does not move it); the last stage has none and runs to the end. E.g.
  # "balanced:2epochs,all" = a balanced warm-up, then all data (sw_zoo/data/sampling.py).
  # "": one stage, balanced if repeat_factor_threshold or tag_cap is set.
  c.data.stages = ""
  c.data.num_threads = 16  # grain reader threads per process
  c.data.prefetch = 8  # batches prefetched per process
  # grain worker processes per host: 0 reads in the training process with num_threads threads
  # (decode shares its GIL); N > 0 spawns N workers, each with num_threads threads and
  # `prefetch` batches of read-ahead (so lower both when raising N). Same batches and
  # checkpointed iterator state for every N. See BUILD_NOTES.md (Data > Input pipeline).
  c.data.num_workers = 0
  # If set and data.dir has no dataset yet, the built-in synthetic dataset is generated there.
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.enabled = False
  c.data.synthetic.num_train = 10000
  c.data.synthetic.num_val = 1000
  c.data.synthetic.image_size = 128
  c.data.synthetic.seed = 0
  c.data.synthetic.drop_tag_fraction = 0.0
  # Store each image's largest-object box in its record (for a box head); images are unchanged.
  c.data.synthetic.box = False
  # Correlated, input-dependent label noise on train labels (data_prep/synthetic_noise.py): about
  # this fraction of objects is missed with all their tags, and colours are misread; 0: none.
  c.data.synthetic.correlated_noise = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "l0"  # a key of sw_zoo.models.VARIANTS
  c.model.act = "silu"  # relu | silu | gelu | hswish
  c.model.attn = "eca"  # eca | se | none
  c.model.dtype = "bfloat16"  # compute dtype; params stay float32
  c.model.drop_path_rate = 0.1
  # Rematerialisation: each block's activations are recomputed in the backward pass instead of
  # kept, for less device memory (bigger batches / images) at ~1/3 more compute per step.
  c.model.remat = False
  # Output heads (sw_zoo/models/heads.py), comma-separated: exactly one of "tags" (a linear tag
  # head) and "heteroscedastic_tags" (the same logits as the mean of input-dependent, correlated
  # logit noise, Monte Carlo averaged; for noisy labels), plus optionally "box" (one box per image,
  # trained with loss.box_weight x smooth-L1; needs a dataset whose records carry boxes).
  c.model.heads = "tags"
  c.model.pool = "mean"  # global pooling before the heads: mean | attention (learned queries)
  c.model.pool_heads = 8  # attention pooling: query heads (must divide the pooled width)
  c.model.het = ml_collections.ConfigDict()
  c.model.het.rank = 6  # rank of the low-rank part of the logit noise covariance
  c.model.het.samples = 16  # Monte Carlo samples per image (training and prediction)
  c.model.het.temperature = 1.0  # sampled logits are divided by this before the sigmoid
  c.model.het.noise_scale = 1.0  # multiplies the noise (-> 0: the plain head)

  # Multi-label loss, summed over tags (sw_zoo/train/losses.py): bce | asl | focal.
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "bce"
  c.loss.label_smoothing = 0.0  # each target moves this/2 towards 0.5
  c.loss.asl_gamma_neg = 4.0  # ASL focusing on negatives (Ridnik et al. defaults)
  c.loss.asl_gamma_pos = 0.0
  c.loss.asl_clip = 0.05  # ASL probability margin: negatives below it cost nothing
  c.loss.focal_gamma = 2.0
  c.loss.focal_alpha = -1.0  # < 0: no alpha balancing
  # Barron's robust loss around each tag's loss (sw_zoo/train/robust_loss.py): none | general
  # (rho with robust_alpha / robust_scale fixed) | adaptive (alpha and scale learned per tag by
  # their negative log-likelihood, starting from robust_alpha / robust_scale; alpha in (0, 2)).
  c.loss.robust = "none"
  c.loss.robust_alpha = 1.0  # 2: L2, 1: Charbonnier, 0: Cauchy, -2: Geman-McClure
  c.loss.robust_scale = 0.5  # width of the quadratic bowl, in units of the per-tag loss
  c.loss.robust_lr = 1e-3  # Adam learning rate of the adaptive alpha / scale latents
  # Box head (model.heads has "box"): per image, box_weight x smooth-L1 over the normalised corners.
  c.loss.box_weight = 10.0
  c.loss.box_beta = 0.05  # smooth-L1's switch from quadratic to linear, in image fractions
  # Per-tag loss weights from training tag counts (sw_zoo/data/balance.py):
  # none | inverse_sqrt | inverse | effective_num | log_ratio; clip bounds max/min weight (0: unbounded).
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
  c.optim.name = "sgd"  # sgd | adamw | lamb
  c.optim.lr = 0.1  # peak learning rate
  c.optim.schedule = "cosine"  # cosine (warmup + cosine) | onecycle | constant (after warmup)
  c.optim.warmup_epochs = 1.0
  c.optim.warmup_steps = 0  # overrides warmup_epochs when > 0
  c.optim.onecycle_pct_start = 0.3  # onecycle: fraction of the run spent rising to lr
  c.optim.onecycle_div_factor = 25.0  # onecycle: starts at lr / this
  c.optim.onecycle_final_div_factor = 1e4  # onecycle: ends at start / this
  c.optim.momentum = 0.9  # sgd
  c.optim.nesterov = True  # sgd
  c.optim.b1 = 0.9  # adamw / lamb
  c.optim.b2 = 0.999  # adamw / lamb
  c.optim.eps = 1e-6  # adamw / lamb
  c.optim.weight_decay = 5e-5  # on kernels only (ndim > 1); never gains, biases, skip gains
  c.optim.wd_exclude = ""  # regex over param paths ('stages_1_0/conv2/kernel') also spared decay
  c.optim.agc_clip = 0.01  # adaptive gradient clipping threshold; 0 disables
  c.optim.agc_exclude = r"^head/"  # regex over param paths that AGC leaves alone (NFNet: the head)
  c.optim.grad_accum_steps = 1  # micro-batches per update; batch_size stays the global batch
  c.optim.ema_decay = 0.0  # EMA of weights (e.g. 0.9999); 0 disables. Eval/export use the EMA
  c.optim.ema_warmup = True  # decay ramps up as (1 + t) / (10 + t) until it reaches ema_decay
  c.optim.skip_nonfinite = True  # a NaN/Inf loss or gradient skips the update (counted)
  # ReduceLROnPlateau (sw_zoo/train/plateau.py): after `patience` periodic evaluations in a row
  # without a gain in `metric` above `min_delta`, the LR (the schedule's, so usually with
  # schedule=constant) is multiplied by `factor`. The multiplier is optimizer state: checkpoints
  # carry it and a resumed run continues with it; logged as train/lr_scale and train/effective_lr.
  c.optim.plateau = ml_collections.ConfigDict()
  c.optim.plateau.factor = 0.0  # e.g. 0.5; 0 disables (and leaves the optimizer state unchanged)
  c.optim.plateau.patience = 2  # evaluations without a gain before each cut
  c.optim.plateau.min_delta = 0.0  # a gain must exceed this to count
  c.optim.plateau.min_scale = 0.01  # the multiplier never goes below this
  c.optim.plateau.metric = "micro_f1"  # or macro_f1 (validation, at eval.threshold)

  # Where the initial weights come from (finetune / transfer); empty: random init.
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ""  # a run's workdir or checkpoints dir (latest step), .../checkpoints/N, a bundle,
  # hf-hub:owner/repo (a bundle, or timm NFNet weights: hf-hub:timm/eca_nfnet_l0.ra2_in1k) or a timm .safetensors
  c.init.use_ema = True  # take the source's EMA weights when it has them
  c.init.new_head = False  # re-initialise the head (a different tag set); automatic on shape mismatch
  c.init.freeze = ""  # regex over param paths kept frozen, e.g. "^(stem|stages_[01]_\d+)/" (stages_<stage>_<block>)
  # > 0: the frozen params start training at this fraction of the run (a freeze schedule: the new
  # head settles on the pretrained features first); 0: frozen throughout.
  c.init.unfreeze_at = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.threshold = 0.4  # score threshold for the F1 logged during training
  c.eval.batch_size = 0  # global; 0: same as batch_size
  # > 0: about this many validation passes spread evenly over the run (the last at its end),
  # whatever its length (a time budget fixes the length only after starting, and adds its one
  # timing pass); 0: every eval_every_steps.
  c.eval.count = 0
  c.eval.num_sample_predictions = 8  # validation images logged to W&B with their predicted tags
  # Thresholds the run's bundle carries, chosen on the final validation pass: best_f1 | p_eq_r
  # per category, or none (eval.threshold everywhere). `sw-zoo tag` / Tagger use them by default.
  c.eval.tune_thresholds = "best_f1"
  # > 0: also a best-F1 threshold per tag with at least this many validation positives (rarer
  # tags keep their category's); 0: per category only.
  c.eval.per_tag_min_count = 0

  # Stop when the validation metric has not improved by more than min_delta for `patience`
  # evaluations in a row (0: never); the run's bundle then comes from its best evaluated
  # checkpoint (needs checkpoint.keep_best >= 1), and rerunning the command does not train on.
  c.early_stop = ml_collections.ConfigDict()
  c.early_stop.patience = 0
  c.early_stop.metric = "micro_f1"  # or macro_f1
  c.early_stop.min_delta = 0.0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.max_to_keep = 3  # the latest N are kept ...
  c.checkpoint.keep_best = 1  # ... plus the best N by validation micro-F1 (0: none)
  c.checkpoint.async_save = True

  c.wandb = ml_collections.ConfigDict()
  c.wandb.mode = "offline"  # offline | online | disabled (WANDB_MODE in the environment wins)
  c.wandb.project = "sw_zoo"
  c.wandb.entity = ""
  c.wandb.name = ""  # default: the workdir's name
  c.wandb.group = ""
  c.wandb.tags = ()
  # For MFU: peak FLOP/s of one device. 0: looked up from the device kind (TPU v4/v5e/v5p/v6e,
  # A100, H100, H200); unknown kinds (CPUs) log TFLOP/s but no MFU.
  c.peak_flops_per_device = 0.0

  # A jax.profiler trace of `steps` training steps (0: none), starting `skip_steps` after the
  # step the run starts or resumes at (the first step compiles), written to <workdir>/profile
  # (TensorBoard / XProf, and perfetto_trace.json.gz for ui.perfetto.dev).
  c.profile = ml_collections.ConfigDict()
  c.profile.steps = 0
  c.profile.skip_steps = 5
  c.profile.all_processes = False  # False: process 0 only; True: each into profile/process_<i>
  return c
