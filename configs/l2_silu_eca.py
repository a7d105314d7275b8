"""NFNet-L2 + SiLU + ECA on Danbooru-scale data: SW-CV-ModelZoo's largest recipe.

  bash launch/tpu_pod.sh configs/l2_silu_eca.py --config.data.dir=gs://BUCKET/danbooru2021

Args (`configs/l2_silu_eca.py:runlocal`): runlocal shrinks the run to a CPU smoke test on the
synthetic dataset, keeping the L2 geometry.
"""
from configs.common import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config()
  c.model.name = "l2"
  c.model.act = "silu"
  c.model.attn = "eca"
  c.model.dtype = "bfloat16"
  c.model.drop_path_rate = 0.1

  c.data.dir = "data/danbooru2021"  # ArrayRecord shards from data_prep
  c.data.image_size = 320  # SW trained at 320 and finetuned at 384
  c.data.augment_spec.ops = "letterbox,rrc,flip,rotate"
  c.data.augment_spec.rrc_scale = (0.87, 1.0)
  c.data.augment_spec.resize_methods = ("bilinear", "bicubic", "lanczos", "box")
  c.mix.mixup_alpha = 0.2
  c.batch_size = 1024
  c.total_epochs = 100.0

  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.nesterov = True
  c.optim.momentum = 0.9
  c.optim.warmup_epochs = 5.0
  c.optim.weight_decay = 2e-5
  c.optim.agc_clip = 0.01

  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  c.wandb.group = "size_x_activation"
  c.wandb.tags = ("l2", "silu", "eca")

  if arg.runlocal:
    c.data.dir = "data/synthetic"
    c.data.synthetic.enabled = True
    c.data.image_size = 64
    c.data.num_threads = 2
    c.model.dtype = "float32"
    c.batch_size = 8
    c.total_epochs = 0.0
    c.total_steps = 4
    c.log_every_steps = 1
    c.checkpoint.every_steps = 2
    c.wandb.mode = "disabled"
  return c
