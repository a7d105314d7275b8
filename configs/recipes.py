"""The size x activation x attention recipe grid: one function, one file per grid point.

`configs/l2_silu_eca.py` is `recipe("l2", "silu", "eca", arg)`; every file in the grid
(l0/l1/l2 x silu/hswish/relu x eca/none) is the same two lines with other names, so a sweep
varies exactly model.name / model.act / model.attn and nothing else.

Args after the file name (`configs/l1_hswish_eca.py:runlocal,finetune,init=runs/l1`):
  runlocal   shrink to a CPU smoke run on the built-in synthetic dataset (geometry unchanged)
  finetune   SW-CV-ModelZoo's finetune: from `init`'s weights, 320 -> 384 px, max LR 0.1 with no
             warmup, cosine over 10 epochs (the schedule that worked best in their report)
  transfer   a new tag set: from `init`'s weights with a fresh head, and the params matching
             `freeze` (default: the stem and the first two stages) kept frozen
  init       checkpoint to start from (a run's workdir, its checkpoints/ dir or checkpoints/N)
  freeze     regex over param paths to freeze (transfer; use '|' to combine, commas split args)
  res        training resolution (default 320; finetune: 384)
"""
from configs.common import base_config, parse_arg
from sw_zoo.train.recipe import PRETRAINED_FREEZE

SIZES = ("l0", "l1", "l2")
ACTIVATIONS = ("silu", "hswish", "relu")
ATTENTIONS = ("eca", "none")
TRANSFER_FREEZE = PRETRAINED_FREEZE  # the stem and the first two stages, as configs/own_data.py's init=


def recipe_name(size: str, act: str, attn: str) -> str:
  return f"{size}_{act}" + ("_eca" if attn == "eca" else "")


def recipe(size: str, act: str, attn: str, arg=None):
  arg = parse_arg(arg, runlocal=False, finetune=False, transfer=False, init="", freeze="", res=0)
  if arg.finetune and arg.transfer:
    raise ValueError("config args: choose one of finetune / transfer")
  if (arg.finetune or arg.transfer) and not arg.init and not arg.runlocal:
    raise ValueError("config args: finetune / transfer need init=<checkpoint or workdir of the source run>")
  c = base_config()
  c.model.name = size
  c.model.act = act
  c.model.attn = attn
  c.model.dtype = "bfloat16"
  # Larger models overfit sooner (SW saw L1/L2 overfit by epoch 70-85 of 100): more drop-path.
  c.model.drop_path_rate = {"l0": 0.1, "l1": 0.15, "l2": 0.2}[size]

  c.data.dir = "data/danbooru2021"  # ArrayRecord shards from data_prep
  c.data.image_size = arg.res or 320  # SW trained at 320 and finetuned at 384
  c.data.augment_spec.ops = "letterbox,rrc,flip,rotate"
  c.data.augment_spec.rrc_scale = (0.87, 1.0)
  c.data.augment_spec.resize_methods = ("bilinear", "bicubic", "lanczos", "box")
  c.mix.mixup_alpha = 0.2  # SW used MixUp 0.2
  c.batch_size = 1024
  c.total_epochs = 100.0

  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.nesterov = True
  c.optim.momentum = 0.9
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 5.0
  c.optim.weight_decay = 2e-5
  c.optim.agc_clip = 0.01
  c.optim.agc_exclude = r"^head/"

  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  c.wandb.group = "size_x_activation"
  c.wandb.tags = (size, act, attn)

  if arg.finetune or arg.transfer:
    c.init.checkpoint = arg.init
  if arg.finetune:
    c.data.image_size = arg.res or 384
    c.total_epochs = 10.0
    c.optim.warmup_epochs = 0.0
    c.optim.lr = 0.1
    c.wandb.tags = (*c.wandb.tags, "finetune")
  if arg.transfer:
    c.init.new_head = True
    c.init.freeze = arg.freeze or TRANSFER_FREEZE
    c.total_epochs = 20.0
    c.optim.warmup_epochs = 1.0
    c.wandb.tags = (*c.wandb.tags, "transfer")

  if arg.runlocal:
    c.data.dir = "data/synthetic"
    c.data.synthetic.enabled = True
    c.data.image_size = 64
    c.data.num_threads = 2
    c.data.prefetch = 2
    c.data.augment_spec.ops = "shift,flip"
    c.model.dtype = "float32"  # XLA:CPU has no fast bf16 convolutions
    c.batch_size = 8
    c.eval.batch_size = 64
    c.total_epochs = 0.0
    c.total_steps = 4
    c.log_every_steps = 1
    c.eval_every_steps = 0
    c.checkpoint.every_steps = 2
    c.wandb.mode = "disabled"
  return c
