"""NFNet-L0 + HSwish: a point of the size x activation recipe grid (configs/recipes.py documents the args).

  bash launch/tpu_pod.sh configs/l0_hswish.py --config.data.dir=gs://BUCKET/danbooru2021
  bash launch/local.sh configs/l0_hswish.py:runlocal
"""
from configs.recipes import recipe


def get_config(arg=None):
  return recipe("l0", "hswish", "none", arg)
