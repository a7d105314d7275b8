"""NFNet (Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization") and NF-ResNet (Brock et al. 2021, "Characterizing signal propagation to close
the performance gap in unnormalized ResNets") in Flax linen, with the geometry and numerics of
timm's ``eca_nfnet_l*``, ``dm_nfnet_f*`` and ``nf_resnet*``.

The architecture lives in one frozen dataclass, ``NFNetConfig`` (timm's ``NfCfg``); named
variants are one-line entries in ``VARIANTS``. Activation and attention are config fields, so
"L2 + SiLU + ECA" or "L0 + ReLU" are configurations, not code.

Parameter names mirror timm's module paths (``stem/conv1``, ``stages_2_5/conv2b``,
``final_conv``, ``head``) so a converter is a renaming plus transposes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from sw_zoo.models.heads import POOLS, AttentionPool, BoxHead, HeteroscedasticTagHead, check_heads
from sw_zoo.models.layers import (ACTIVATIONS, ATTENTIONS, CONV_IMPLS, ECA, PADDINGS, DropPath, SqueezeExcite,
                                  StdConv, get_activation, make_divisible, param_init)

Dtype = Any

# timm's IMAGENET_DEFAULT_MEAN / _STD, in [0, 1] units; the model rescales them to [0, 255].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm create_stem types; '_pool' adds a 3x3 stride-2 max pool (NF-ResNet: '7x7_pool').
STEM_TYPES = ("deep_quad", "deep", "deep_pool", "3x3", "3x3_pool", "7x7", "7x7_pool")


@dataclasses.dataclass(frozen=True)
class NFNetConfig:
  """Architecture of an NFNet. Frozen and hashable, so it can be a linen module field."""
  depths: tuple[int, ...]
  channels: tuple[int, ...]
  feat_mult: float = 2.0            # final 1x1 conv width = channels[-1] * feat_mult (0: no final conv)
  group_size: int | None = 64       # channels per group in the 3x3 convs (None: dense)
  bottle_ratio: float = 0.25        # bottleneck width = out_chs * bottle_ratio
  stem_type: str = "deep_quad"      # one of STEM_TYPES
  stem_chs: int = 128
  extra_conv: bool = True           # second grouped 3x3 conv per block (NFNet-F/L)
  padding: str = "symmetric"        # conv padding: 'symmetric' (timm) or 'same' (TF SAME, timm dm_nfnet_f*)
  gamma_in_act: bool = False        # scale activations by the NF gain instead of folding it into the
                                    # convs (timm gamma_in_act, dm_nfnet_f*: the stem's first conv and
                                    # final_conv then have no gain, and the final act does)
  alpha: float = 0.2                # residual branch scale; expected variance grows by alpha^2 per block
  act: str = "silu"                 # key of layers.ACTIVATIONS
  attn: str | None = None           # 'eca', 'se' or None; applied after conv3
  attn_gain: float = 2.0            # NF correction after a sigmoid gate (which halves the variance)
  se_rd_ratio: float = 0.5          # SE bottleneck ratio (timm NFNet-F: 0.5)
  skipinit: bool = False            # learnable zero-init scalar per block instead of zero-init conv3 gain
  std_conv_eps: float = 1e-5
  ch_div: int = 8                   # channel rounding divisor (timm)
  drop_rate: float = 0.0            # dropout before the head
  drop_path_rate: float = 0.0       # stochastic depth, linearly increasing over blocks up to this
  head_init_std: float = 0.01       # timm: N(0, 0.01); 0 gives a zero-initialised head
  head_prior_prob: float | None = None  # head bias = logit(p) (rare-tag prior for sigmoid BCE)
  input_mean: tuple[float, float, float] = IMAGENET_MEAN
  input_std: tuple[float, float, float] = IMAGENET_STD
  # Output heads and pooling (sw_zoo/models/heads.py): exactly one tag head ('tags' or
  # 'heteroscedastic_tags'), optionally 'box'; 'mean' or 'attention' pooling.
  heads: tuple[str, ...] = ("tags",)
  pool: str = "mean"
  pool_heads: int = 8               # attention pooling: query heads (must divide num_features)
  het_rank: int = 6                 # heteroscedastic head: rank of the low-rank noise covariance
  het_samples: int = 16             # ... Monte Carlo samples averaged per image
  het_temperature: float = 1.0      # ... sigmoid temperature of the sampled logits
  het_noise_scale: float = 1.0      # ... multiplies the sampled noise (0 would be the plain head)

  def __post_init__(self):
    def bad(key, msg):
      raise ValueError(f"NFNetConfig.{key}: {msg}")
    # Coerce lists (from ConfigDicts / JSON) so the config stays hashable.
    for key in ("depths", "channels", "input_mean", "input_std", "heads"):
      object.__setattr__(self, key, tuple(getattr(self, key)))
    if len(self.depths) != len(self.channels) or not self.depths:
      bad("depths", f"{self.depths} and channels {self.channels} must be non-empty and the same length")
    if any(d < 1 for d in self.depths):
      bad("depths", f"every stage needs at least one block, got {self.depths}")
    if self.act not in ACTIVATIONS:
      bad("act", f"{self.act!r} is not one of {sorted(ACTIVATIONS)}")
    if self.attn is not None and self.attn not in ATTENTIONS:
      bad("attn", f"{self.attn!r} is not one of {sorted(ATTENTIONS)} or None")
    if self.stem_type not in STEM_TYPES:
      bad("stem_type", f"{self.stem_type!r} is not one of {STEM_TYPES}")
    if self.padding not in PADDINGS:
      bad("padding", f"{self.padding!r} is not one of {PADDINGS}")
    if self.stem_type == "deep_quad" and self.stem_chs % 8:
      bad("stem_chs", f"deep_quad stem needs a multiple of 8, got {self.stem_chs}")
    if not 0.0 <= self.drop_rate < 1.0:
      bad("drop_rate", f"must be in [0, 1), got {self.drop_rate}")
    if not 0.0 <= self.drop_path_rate < 1.0:
      bad("drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
    if self.head_prior_prob is not None and not 0.0 < self.head_prior_prob < 1.0:
      bad("head_prior_prob", f"must be in (0, 1) or None, got {self.head_prior_prob}")
    try:
      check_heads(self.heads)
    except ValueError as e:
      bad("heads", str(e))
    if self.pool not in POOLS:
      bad("pool", f"{self.pool!r} is not one of {POOLS}")
    if self.pool == "attention" and (self.pool_heads < 1 or self.num_features % self.pool_heads):
      bad("pool_heads", f"{self.pool_heads} must be >= 1 and divide the {self.num_features} pooled features")
    if self.het_rank < 1 or self.het_samples < 1:
      bad("het_rank", f"rank {self.het_rank} and het_samples {self.het_samples} must be >= 1")
    if not self.het_temperature > 0 or not self.het_noise_scale >= 0:
      bad("het_temperature", f"needs het_temperature > 0 and het_noise_scale >= 0, got "
                             f"{self.het_temperature}, {self.het_noise_scale}")
    for c in self.channels:
      mid, groups = self.bottleneck(c)
      if groups < 1:
        bad("group_size", f"{self.group_size} exceeds the bottleneck width "
                          f"{make_divisible(c * self.bottle_ratio, self.ch_div)} of a {c}-channel stage")

  def bottleneck(self, out_chs: int) -> tuple[int, int]:
    """(mid channels, groups) of a block with ``out_chs`` outputs, as timm computes them."""
    mid = make_divisible(out_chs * self.bottle_ratio, self.ch_div)
    if not self.group_size:
      return mid, 1
    groups = mid // self.group_size
    if self.group_size % self.ch_div == 0:
      mid = self.group_size * groups  # timm snaps mid to whole groups
    elif mid % self.group_size:
      raise ValueError(f"NFNetConfig.group_size: {self.group_size} does not divide the bottleneck "
                       f"width {mid} of a {out_chs}-channel stage")
    return mid, groups

  def nonlinearity(self):
    """(activation fn as used between convs, NF gain folded into every StdConv).

    timm folds gamma into the convs (cheaper); with ``gamma_in_act`` it scales the activation
    outputs instead, so convs that read no activation (the stem's first, final_conv) go unscaled
    and the final activation is scaled.
    """
    act = get_activation(self.act)
    if not self.gamma_in_act:
      return act.fn, act.gamma
    fn, gamma = act.fn, act.gamma
    return (lambda x: fn(x) * jnp.asarray(gamma, x.dtype)), 1.0

  @property
  def num_features(self) -> int:
    """Width of the pooled embedding."""
    if self.feat_mult:
      return make_divisible(int(self.channels[-1] * self.feat_mult), self.ch_div)
    return self.channels[-1]


def _nfnet_l(depths, feat_mult):
  # timm _nfnet_cfg(...) as used by eca_nfnet_l*: the attention is left to the caller.
  return NFNetConfig(depths=depths, channels=(256, 512, 1536, 1536), feat_mult=feat_mult,
                     group_size=64, bottle_ratio=0.25)


def _dm_nfnet_f(depths):
  # timm _dm_nfnet_cfg (dm_nfnet_f*, DeepMind-weight compatible): GELU, SE(0.5), group 128,
  # skipinit, gamma in the activations, TF SAME padding; std_conv_eps stays NfCfg's 1e-5.
  return NFNetConfig(depths=depths, channels=(256, 512, 1536, 1536), feat_mult=2.0, group_size=128,
                     bottle_ratio=0.5, act="gelu", attn="se", se_rd_ratio=0.5, skipinit=True,
                     gamma_in_act=True, padding="same")


def _nf_resnet(depths):
  # timm _nfres_cfg (nf_resnet*): pre-activation ResNet bottlenecks, 7x7 conv + max pool stem,
  # no final conv (num_features = channels[-1]), ReLU, no attention.
  return NFNetConfig(depths=depths, channels=(256, 512, 1024, 2048), feat_mult=0.0, group_size=None,
                     bottle_ratio=0.25, stem_type="7x7_pool", stem_chs=64, extra_conv=False, act="relu")


VARIANTS: dict[str, NFNetConfig] = {
    # timm eca_nfnet_l0/l1/l2 geometry (add attn='eca' for the timm models; SW-CV-ModelZoo ran
    # these with silu/hswish/relu, with and without ECA).
    "l0": _nfnet_l((1, 2, 6, 3), 1.5),
    "l1": _nfnet_l((2, 4, 12, 6), 2.0),
    "l2": _nfnet_l((3, 6, 18, 9), 2.0),
    # timm dm_nfnet_f0..f3 (NFNet-F, the paper's models; attn 'se' is part of the variant).
    "f0": _dm_nfnet_f((1, 2, 6, 3)),
    "f1": _dm_nfnet_f((2, 4, 12, 6)),
    "f2": _dm_nfnet_f((3, 6, 18, 9)),
    "f3": _dm_nfnet_f((4, 8, 24, 12)),
    # timm nf_resnet26 / nf_resnet50.
    "nf_resnet26": _nf_resnet((2, 2, 2, 2)),
    "nf_resnet50": _nf_resnet((3, 4, 6, 3)),
    # CPU-sized: the same block structure (deep_quad stem, grouped 3x3s, extra conv) at toy
    # widths. tiny, fwd+bwd at batch 64 on 2 idle CPU cores with the einsum grouped conv:
    # ~500 img/s at 96 px, ~290 img/s at 128 px (native grouped conv: ~220 / ~120).
    # group_size 16 measured 15-25% faster than 8.
    "tiny": NFNetConfig(depths=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_chs=16, group_size=16,
                        bottle_ratio=0.5, feat_mult=2.0),
    # cpu_s: between tiny and l0 for training on a CPU in minutes (configs/own_data.py picks it
    # there): 1.5x tiny's widths and a second block in stage 2; see BUILD_NOTES (Models) for its
    # speed and F1 against tiny.
    "cpu_s": NFNetConfig(depths=(1, 1, 2, 1), channels=(48, 96, 192, 384), stem_chs=24, group_size=16,
                         bottle_ratio=0.5, feat_mult=2.0),
    # timm test_nfnet (Hub weights: timm/test_nfnet.r160_in1k): the l* block layout with SE(0.25)
    # at toy widths; the CPU-sized timm checkpoint that tests warm starts from timm weights.
    "test_nfnet": NFNetConfig(depths=(1, 1, 1, 1), channels=(32, 64, 96, 128), feat_mult=1.5, group_size=8,
                              bottle_ratio=0.25, act="silu", attn="se", se_rd_ratio=0.25),
    # nano: unit tests only; also exercises the '3x3' stem.
    "nano": NFNetConfig(depths=(1, 1, 1, 1), channels=(16, 32, 32, 64), stem_type="3x3", stem_chs=16,
                        group_size=8, bottle_ratio=0.5, feat_mult=1.0),
}


class NFBlock(nn.Module):
  """Pre-activation NF bottleneck block (timm NormFreeBlock with reg=False):

      out = act(x) * beta
      shortcut = x, or avgpool+1x1 conv of out when the shape changes
      r = conv3(act(conv2b(act(conv2(act(conv1(out)))))))   # conv2/2b: grouped 3x3
      r = attn_gain * attn(r);  r = drop_path(r);  r *= skipinit_gain (if skipinit)
      return shortcut + alpha * r

  Every StdConv carries the activation's gamma. Without skipinit, conv3's gain starts at 0,
  so every residual branch is zero at init.
  """
  cfg: NFNetConfig
  out_chs: int
  stride: int
  beta: float
  drop_path_rate: float
  conv_impl: str = "auto"
  logical_axes: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg = self.cfg
    act_fn, conv_gamma = cfg.nonlinearity()
    mid, groups = cfg.bottleneck(self.out_chs)
    conv = lambda *a, **k: StdConv(*a, gamma=conv_gamma, eps=cfg.std_conv_eps, padding=cfg.padding,
                                   conv_impl=self.conv_impl, logical_axes=self.logical_axes,
                                   dtype=self.dtype, param_dtype=self.param_dtype, **k)

    out = act_fn(x) * jnp.asarray(self.beta, x.dtype)
    shortcut = x
    if x.shape[-1] != self.out_chs or self.stride != 1:
      s = out
      if self.stride > 1:
        # AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False): a partial last
        # window (odd sizes) averages only its valid pixels.
        pad = tuple((0, (-n) % 2) for n in s.shape[1:3])
        s = nn.avg_pool(s, (2, 2), strides=(self.stride, self.stride), padding=pad,
                        count_include_pad=False)
      shortcut = conv(self.out_chs, 1, name="downsample")(s)

    r = conv(mid, 1, name="conv1")(out)
    r = conv(mid, 3, stride=self.stride, groups=groups, name="conv2")(act_fn(r))
    if cfg.extra_conv:
      r = conv(mid, 3, groups=groups, name="conv2b")(act_fn(r))
    r = conv(self.out_chs, 1, gain_init=1.0 if cfg.skipinit else 0.0, name="conv3")(act_fn(r))
    if cfg.attn == "eca":
      r = ECA(logical_axes=self.logical_axes, param_dtype=self.param_dtype, name="attn_last")(r)
      r = r * jnp.asarray(cfg.attn_gain, r.dtype)
    elif cfg.attn == "se":
      r = SqueezeExcite(rd_ratio=cfg.se_rd_ratio, logical_axes=self.logical_axes, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="attn_last")(r)
      r = r * jnp.asarray(cfg.attn_gain, r.dtype)
    r = DropPath(self.drop_path_rate, name="drop_path")(r, deterministic=not train)
    if cfg.skipinit:
      # SkipInit (De & Smith 2020): zero-initialised scalar gain on the residual branch.
      g = self.param("skipinit_gain", param_init(nn.initializers.zeros, (), self.logical_axes), (),
                     self.param_dtype)
      r = r * g.astype(r.dtype)
    return shortcut + r * jnp.asarray(cfg.alpha, r.dtype)


def stem_plan(cfg: NFNetConfig) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
  """(kernel size, output channels per conv, stride per conv) of `cfg`'s stem; shared with the
  ONNX writer so both build the same stem."""
  c = cfg.stem_chs
  kind = cfg.stem_type.removesuffix("_pool")
  k = 7 if kind == "7x7" else 3
  if kind == "deep_quad":
    return k, (c // 8, c // 4, c // 2, c), (2, 1, 1, 2)
  if kind == "deep":
    return k, (c // 2, c // 2, c), (2, 1, 1)
  return k, (c,), (2,)


class Stem(nn.Module):
  """timm create_stem for 'deep_quad' (NFNet: 3x3 convs to C/8, C/4, C/2, C with strides
  2, 1, 1, 2), 'deep' (C/2, C/2, C; strides 2, 1, 1), '3x3' (one stride-2 conv) and '7x7' (one
  stride-2 7x7 conv); a '_pool' suffix adds MaxPool2d(3, stride 2, padding 1) (NF-ResNet).
  No activation after the last conv: each block starts with its own."""
  cfg: NFNetConfig
  conv_impl: str = "auto"
  logical_axes: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def stride(self) -> int:
    if self.cfg.stem_type == "deep_quad":
      return 4
    return 4 if self.cfg.stem_type.endswith("_pool") else 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    act_fn, conv_gamma = cfg.nonlinearity()
    k, chs, strides = stem_plan(cfg)
    for i, (ch, s) in enumerate(zip(chs, strides)):
      if i:
        x = act_fn(x)
      name = "conv" if len(chs) == 1 else f"conv{i + 1}"
      # timm scales every conv, this first one included, by the activation gamma (unless
      # gamma_in_act); kept so timm weights give timm outputs.
      x = StdConv(ch, k, stride=s, gamma=conv_gamma, eps=cfg.std_conv_eps, padding=cfg.padding,
                  conv_impl=self.conv_impl, logical_axes=self.logical_axes, dtype=self.dtype,
                  param_dtype=self.param_dtype, name=name)(x)
    if cfg.stem_type.endswith("_pool"):
      # nn.MaxPool2d(3, stride=2, padding=1): pads with -inf.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


class NFNet(nn.Module):
  """NFNet image tagger/classifier.

  Input: NHWC images, uint8 or float, RGB, pixel values in [0, 255]. The model normalises them
  itself with ``cfg.input_mean/input_std`` (ImageNet, in [0, 1] units), so callers never
  normalise. Any H, W works (stride 32; sizes not divisible by 32 are handled as timm does).

  ``__call__(x, *, train, return_features=False)``:
    * returns logits [B, num_classes] in float32 (compute may be bfloat16);
      with ``num_classes == 0`` there is no head and it returns the pooled embedding instead;
    * ``return_features=True`` returns a dict: 'stem' (stem output; stride 4 for 'deep_quad'
      and '*_pool', 2 otherwise), 'stages' (one [B, h, w, C] per stage: the residual stream), 'pooled'
      [B, num_features] float32 (the embedding), 'logits' (absent when num_classes == 0) and, with
      a box head (``cfg.heads``), 'box' [B, 4] float32: x0, y0, x1, y1 in [0, 1] of the input.
  ``train=True`` enables head dropout (RNG stream ``'dropout'``), drop path (stream
  ``'drop_path'``) and the heteroscedastic head's noise (stream ``'heteroscedastic'``); pass
  them in ``rngs`` when used.
  """
  cfg: NFNetConfig
  num_classes: int
  dtype: Dtype = jnp.float32        # compute dtype (e.g. jnp.bfloat16)
  param_dtype: Dtype = jnp.float32
  conv_impl: str = "auto"           # grouped-conv lowering: 'auto' | 'native' | 'einsum'
  remat: bool = False               # recompute each block in the backward pass (saves activation memory)
  logical_axes: bool = False        # init returns nn.LogicallyPartitioned boxes (see models/partitioning.py)

  def _normalize(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"NFNet expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    mean = jnp.asarray(self.cfg.input_mean, jnp.float32) * 255.0
    std = jnp.asarray(self.cfg.input_std, jnp.float32) * 255.0
    return ((x.astype(jnp.float32) - mean) / std).astype(self.dtype)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, return_features: bool = False):
    cfg = self.cfg
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"NFNet.conv_impl={self.conv_impl!r}; expected one of {CONV_IMPLS}")
    act_fn, conv_gamma = cfg.nonlinearity()
    common = dict(conv_impl=self.conv_impl, logical_axes=self.logical_axes, dtype=self.dtype,
                  param_dtype=self.param_dtype)

    stem = Stem(cfg, name="stem", **common)
    x = stem(self._normalize(x))
    features = {"stem": x, "stages": []}

    # train is a Python bool: static for remat (argnum 2, counting self).
    block_cls = nn.remat(NFBlock, static_argnums=(2,)) if self.remat else NFBlock
    n_blocks = sum(cfg.depths)
    expected_var, idx = 1.0, 0
    for si, (depth, out_chs) in enumerate(zip(cfg.depths, cfg.channels)):
      stage_stride = 1 if si == 0 and stem.stride > 2 else 2
      for bi in range(depth):
        # Drop path grows linearly from 0 at the first block to drop_path_rate at the last.
        dpr = cfg.drop_path_rate * idx / max(n_blocks - 1, 1)
        x = block_cls(cfg, out_chs=out_chs, stride=stage_stride if bi == 0 else 1,
                      beta=expected_var ** -0.5, drop_path_rate=dpr, name=f"stages_{si}_{bi}",
                      **common)(x, train)
        # Signal propagation (NF-ResNet paper): each block adds alpha^2 to the variance of
        # the residual stream; a stage's first block has a conv shortcut that resets it to 1.
        if bi == 0:
          expected_var = 1.0
        expected_var += cfg.alpha ** 2
        idx += 1
      features["stages"].append(x)
    features["stages"] = tuple(features["stages"])

    if cfg.feat_mult:
      x = StdConv(cfg.num_features, 1, gamma=conv_gamma, eps=cfg.std_conv_eps, padding=cfg.padding,
                  name="final_conv", **common)(x)
    x = act_fn(x)
    if cfg.pool == "attention":
      pooled = AttentionPool(cfg.pool_heads, logical_axes=self.logical_axes, param_dtype=self.param_dtype,
                             name="attn_pool")(x)
    else:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    features["pooled"] = pooled
    if self.num_classes == 0:
      return features if return_features else pooled

    h = nn.Dropout(cfg.drop_rate)(pooled, deterministic=not train)
    prior = cfg.head_prior_prob
    bias_init = (nn.initializers.constant(math.log(prior / (1.0 - prior))) if prior is not None
                 else nn.initializers.zeros)
    kernel_init = (nn.initializers.normal(cfg.head_init_std) if cfg.head_init_std > 0
                   else nn.initializers.zeros)
    kernel_init = param_init(kernel_init, ("embed", "tags"), self.logical_axes)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=kernel_init, bias_init=param_init(bias_init, ("tags",), self.logical_axes),
                      name="head")(h.astype(self.dtype))
    if "heteroscedastic_tags" in cfg.heads:
      # The plain head's logits are the noise's mean: same params, so either warm-starts the other.
      logits = HeteroscedasticTagHead(
          rank=cfg.het_rank, num_samples=cfg.het_samples, temperature=cfg.het_temperature,
          noise_scale=cfg.het_noise_scale, logical_axes=self.logical_axes, dtype=self.dtype,
          param_dtype=self.param_dtype, name="het")(h.astype(self.dtype), logits, train=train)
    logits = logits.astype(jnp.float32)
    if "box" in cfg.heads:
      features["box"] = BoxHead(logical_axes=self.logical_axes, dtype=self.dtype, param_dtype=self.param_dtype,
                                name="box_head")(x, pooled)
    if return_features:
      features["logits"] = logits
      return features
    return logits
