"""Models: NFNet family (timm eca_nfnet_l* geometry) and its NF building blocks."""
from sw_zoo.models.layers import ACTIVATIONS, ATTENTIONS, ECA, Activation, DropPath, SqueezeExcite, StdConv
from sw_zoo.models.nfnet import VARIANTS, NFBlock, NFNet, NFNetConfig
from sw_zoo.models.registry import create_model, list_models, model_config

__all__ = [
    "ACTIVATIONS", "ATTENTIONS", "Activation", "DropPath", "ECA", "NFBlock", "NFNet", "NFNetConfig",
    "SqueezeExcite", "StdConv", "VARIANTS", "create_model", "list_models", "model_config",
]
