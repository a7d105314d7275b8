"""Models: NFNet / NF-ResNet families (timm eca_nfnet_l*, dm_nfnet_f*, nf_resnet* geometry), their NF
building blocks, the name registry and the logical-axis partitioning rules."""
from sw_zoo.models.layers import ACTIVATIONS, ATTENTIONS, ECA, Activation, DropPath, SqueezeExcite, StdConv
from sw_zoo.models.nfnet import VARIANTS, NFBlock, NFNet, NFNetConfig
from sw_zoo.models.partitioning import (DATA_PARALLEL_RULES, FSDP_RULES, abstract_params, param_shardings,
                                        unboxed_init)
from sw_zoo.models.registry import create_model, list_models, model_config

__all__ = [
    "ACTIVATIONS", "ATTENTIONS", "Activation", "DATA_PARALLEL_RULES", "DropPath", "ECA", "FSDP_RULES", "NFBlock",
    "NFNet", "NFNetConfig", "SqueezeExcite", "StdConv", "VARIANTS", "abstract_params", "create_model",
    "list_models", "model_config", "param_shardings", "unboxed_init",
]
