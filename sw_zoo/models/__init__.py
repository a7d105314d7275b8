"""Models: NFNet / NF-ResNet families (timm eca_nfnet_l*, dm_nfnet_f*, nf_resnet* geometry), their NF
building blocks, the name registry, `ModelSpec` and the logical axes of their params (the rules
that place those axes on a mesh live in `sw_zoo.sharding`)."""
from sw_zoo.models.layers import ACTIVATIONS, ATTENTIONS, ECA, Activation, DropPath, SqueezeExcite, StdConv
from sw_zoo.models.nfnet import VARIANTS, NFBlock, NFNet, NFNetConfig
from sw_zoo.models.partitioning import LOGICAL_AXES, abstract_params, unboxed_init
from sw_zoo.models.registry import create_model, list_models, model_config
from sw_zoo.models.spec import ModelSpec

__all__ = [
    "ACTIVATIONS", "ATTENTIONS", "Activation", "DropPath", "ECA", "LOGICAL_AXES", "ModelSpec", "NFBlock", "NFNet",
    "NFNetConfig", "SqueezeExcite", "StdConv", "VARIANTS", "abstract_params", "create_model", "list_models",
    "model_config", "unboxed_init",
]
