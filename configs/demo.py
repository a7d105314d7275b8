"""The demo tagger: a tiny NFNet on the built-in synthetic dataset, sized for a 2-core CPU.

  python -m sw_zoo.train --config configs/demo.py --workdir runs/demo
  python -m sw_zoo.train --config configs/demo.py:quick --workdir /tmp/q   # a 1-minute smoke run
"""
from configs.common import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, quick=False)
  c = base_config()
  c.data.synthetic.enabled = True
  c.data.dir = "data/synthetic"
  c.data.image_size = 96
  c.data.num_threads = 2
  c.data.prefetch = 4

  c.model.name = "tiny"
  c.model.act = "silu"
  c.model.attn = "eca"
  c.model.dtype = "float32"  # XLA:CPU has no fast bf16 convolutions
  c.model.drop_path_rate = 0.0

  c.batch_size = 64
  c.total_epochs = 12.0
  c.log_every_steps = 50
  c.eval_every_steps = 0

  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.warmup_epochs = 0.5
  c.optim.weight_decay = 0.05
  c.optim.agc_clip = 0.0

  c.checkpoint.every_steps = 200
  c.checkpoint.max_to_keep = 2
  if arg.quick:
    c.total_epochs = 0.0
    c.total_steps = 60
    c.log_every_steps = 10
    c.checkpoint.every_steps = 20
  return c
