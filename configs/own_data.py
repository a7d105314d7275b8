"""Your own tagged images -> a tagger, with the settings sized to the data and the machine.

  sw-zoo prepare folder ~/my_images --out data/mine
  sw-zoo train --config configs/own_data.py --workdir runs/mine --config.data.dir=data/mine \
      --config.budget_minutes=15
  sw-zoo tag ~/new_images --model runs/mine/bundle

Every setting below left as None is chosen when the run starts (sw_zoo/train/recipe.py), from the
prepared dataset (training images, tags, image sizes, validation images) and the hardware (CPU
cores, or accelerator kind and count): model size, resolution, batch, epochs, learning rate and
warm-up, augmentation, evaluations, per-tag thresholds. The run prints each choice with its reason
and keeps them in <workdir>/recipe.json (a resume reuses them). Set any of them yourself with
--config.KEY=VALUE and the recipe leaves it alone.

  --config.budget_minutes=N      the whole run, evaluations included, ends within N minutes
  --config.early_stop.patience=P stop after P evaluations without a better validation micro-F1

Args after the file name:
  init=<source>   start from pretrained weights: a run's workdir, a bundle, a timm .safetensors,
                  hf-hub:timm/eca_nfnet_l0.ra2_in1k or a bundle published on the Hub; the model
                  is the one the weights are for, the LR a third, the stem and first two stages
                  frozen for the first quarter of the run (configs/own_data.py:init=runs/other)
"""
from configs.common import base_config, parse_arg
from sw_zoo.train import recipe


def get_config(arg=None):
  arg = parse_arg(arg, init="")
  c = base_config()
  c.data.dir = ""  # required: --config.data.dir=<what sw-zoo prepare wrote>
  c.data.prefetch = 4
  c.optim.name = "adamw"
  c.optim.weight_decay = 0.05
  c.optim.agc_clip = 0.0  # AdamW at these batch sizes is stable without it
  c.optim.schedule = "cosine"
  c.log_every_steps = 50
  c.checkpoint.every_steps = 500
  c.checkpoint.max_to_keep = 2
  c.wandb.group = "own_data"
  c.init.checkpoint = arg.init
  recipe.leave_open(c)  # every key the recipe chooses, unless set on the command line
  return c
