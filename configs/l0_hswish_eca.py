"""NFNet-L0 + HSwish + ECA: a point of the size x activation recipe grid (configs/recipes.py documents the args).

  bash launch/tpu_pod.sh configs/l0_hswish_eca.py --config.data.dir=gs://BUCKET/danbooru2021
  bash launch/local.sh configs/l0_hswish_eca.py:runlocal
"""
from configs.recipes import recipe


def get_config(arg=None):
  return recipe("l0", "hswish", "eca", arg)
