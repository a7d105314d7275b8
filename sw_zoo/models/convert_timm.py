"""timm NFNet / NF-ResNet weights -> sw_zoo params.

Our param names mirror timm's module paths, so conversion is a renaming plus layout changes:

  timm key                                    sw_zoo path                        layout
  stem.conv{1..4}.weight / stem.conv.weight   stem/conv{1..4}/kernel             OIHW -> HWIO
  stages.i.j.{conv1,conv2,conv2b,conv3}.*     stages_i_j/{conv1,...}/*
  stages.i.j.downsample.conv.*                stages_i_j/downsample/*
  final_conv.*                                final_conv/*
  <conv>.gain                                 <conv>/gain                        (O,1,1,1) -> (O,)
  <conv>.bias                                 <conv>/bias
  stages.i.j.attn_last.conv.weight  (ECA)     stages_i_j/attn_last/kernel        (1,1,k) -> (k,)
  stages.i.j.attn_last.fc{1,2}.weight (SE)    stages_i_j/attn_last/fc{1,2}/kernel (O,I,1,1) -> (I,O)
  stages.i.j.attn_last.fc{1,2}.bias           stages_i_j/attn_last/fc{1,2}/bias
  stages.i.j.skipinit_gain                    stages_i_j/skipinit_gain           scalar
  head.fc.weight / head.fc.bias               head/kernel / head/bias            (C,F) -> (F,C)

The expected tree comes from ``jax.eval_shape`` of our model, so every parameter of the model must
be found (with the right shape) and every key of the state dict must be used; the first key that
fails either way is named in the error. With ``num_classes=0`` (our model without a head) the
checkpoint's ``head.fc.*`` keys are dropped, for transfer learning with a new head.

timm's pretrained configs for these models use the ImageNet mean/std that our models apply
themselves to [0, 255] input, so nothing else carries over. (The configs' crop_pct / test input
size are evaluation-recipe choices, not part of the weights.)

Neither torch nor timm is needed for a ``.safetensors`` file; torch is imported only to read a
``.pth``/``.bin`` state dict (with ``weights_only=True``: no pickled code runs).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from sw_zoo.models.registry import create_model

# timm model names -> (our model name, create_model arguments). The arguments are defaults: those
# passed to convert_state_dict override them (timm's act_layer='relu' is our act='relu').
TIMM_MODEL_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "eca_nfnet_l0": ("l0", {"act": "silu", "attn": "eca"}),
    "eca_nfnet_l1": ("l1", {"act": "silu", "attn": "eca"}),
    "eca_nfnet_l2": ("l2", {"act": "silu", "attn": "eca"}),
    "nfnet_l0": ("l0", {"act": "silu", "attn": "se", "se_rd_ratio": 0.25}),
    "dm_nfnet_f0": ("f0", {}),
    "dm_nfnet_f1": ("f1", {}),
    "dm_nfnet_f2": ("f2", {}),
    "dm_nfnet_f3": ("f3", {}),
    "nf_resnet26": ("nf_resnet26", {}),
    "nf_resnet50": ("nf_resnet50", {}),
    "test_nfnet": ("test_nfnet", {}),
}

Params = dict[str, Any]
_Transform = Callable[[np.ndarray], np.ndarray]


def sw_zoo_model(architecture: str, *, where: str = "") -> tuple[str, dict[str, Any]]:
  """(our model name, create_model arguments) for a timm architecture, e.g. the ``architecture``
  of a Hub repo's config.json; one we cannot build is a ValueError naming those we can."""
  if architecture not in TIMM_MODEL_NAMES:
    raise ValueError(f"{where + ': ' if where else ''}timm architecture {architecture!r} has no sw_zoo "
                     f"equivalent; supported: {', '.join(sorted(TIMM_MODEL_NAMES))}")
  name, kwargs = TIMM_MODEL_NAMES[architecture]
  return name, dict(kwargs)


def resolve_model(model_name: str, num_classes: int, **model_kwargs) -> nn.Module:
  """Our model for ``model_name``: a timm name from ``TIMM_MODEL_NAMES`` or any ``create_model`` name.

  ``model_kwargs`` (act, attn, NFNetConfig fields, dtype, conv_impl, ...) go to ``create_model``
  and override a timm name's defaults.
  """
  name, defaults = TIMM_MODEL_NAMES.get(model_name, (model_name, {}))
  return create_model(name, num_classes=num_classes, **{**defaults, **model_kwargs})


def _abstract_params(model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {path: shape} of the model's params, without computing them."""
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32),
                                                train=False))
  params = nn.unbox(variables["params"])  # models built with logical_axes hold nn.Partitioned boxes
  return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(params).items()}


_STAGE = re.compile(r"^stages_(\d+)_(\d+)$")


def _timm_key(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, tuple[int, ...], _Transform]:
  """(timm key, its expected shape, timm -> ours array transform) for one of our param paths."""
  *modules, leaf = path
  parts: list[str] = []
  for m in modules:
    match = _STAGE.match(m)
    parts += [f"stages.{match[1]}.{match[2]}"] if match else [m]
  # Module renames: timm wraps the shortcut conv in DownsampleAvg.conv, the ECA conv in .conv,
  # and the classifier in ClassifierHead.fc.
  if parts[-1:] == ["downsample"]:
    parts.append("conv")
  elif parts[-1:] == ["head"]:
    parts.append("fc")
  elif parts[-1:] == ["attn_last"] and leaf == "kernel":
    parts.append("conv")
  prefix = ".".join(parts)
  key = lambda name: f"{prefix}.{name}" if prefix else name

  same = lambda a: a
  if leaf == "skipinit_gain" or leaf == "bias":
    return key(leaf), shape, same
  if leaf == "gain":
    return key("gain"), (shape[0], 1, 1, 1), lambda a: a.reshape(shape)
  if leaf == "kernel":
    if len(shape) == 4:  # StdConv HWIO <- OIHW
      h, w, i, o = shape
      return key("weight"), (o, i, h, w), lambda a: a.transpose(2, 3, 1, 0)
    if len(shape) == 1:  # ECA Conv1d(1, 1, k)
      return key("weight"), (1, 1, shape[0]), lambda a: a.reshape(shape)
    if len(shape) == 2 and parts[-1] == "fc" and parts[-2] == "head":  # nn.Linear (out, in)
      return key("weight"), (shape[1], shape[0]), lambda a: a.T
    if len(shape) == 2:  # SE fc1/fc2: 1x1 Conv2d (out, in, 1, 1)
      return key("weight"), (shape[1], shape[0], 1, 1), lambda a: a[:, :, 0, 0].T
  raise ValueError(f"convert_timm: no timm equivalent known for param {'/'.join(path)} {shape}")


def convert_state_dict(state_dict: Mapping[str, Any], model_name: str, *, num_classes: int,
                       **model_kwargs) -> Params:
  """A timm NormFreeNet state dict (name -> array) as our ``params`` tree (float32 numpy arrays).

  ``model_name``: a timm name (``'eca_nfnet_l0'``, ``'nfnet_l0'``, ``'dm_nfnet_f0'``, ...; see
  ``TIMM_MODEL_NAMES``) or one of ours (``'l0_silu_eca'``, with ``model_kwargs`` as for
  ``create_model``, e.g. ``act='relu'`` for a timm model built with ``act_layer='relu'``).
  ``num_classes`` must match the checkpoint's head, or be 0 to drop the head.
  Raises ValueError naming the first missing, unexpected or mis-shaped key.
  """
  model = resolve_model(model_name, num_classes, **model_kwargs)
  described = f"timm state dict -> {model_name!r} (num_classes={num_classes})"
  ours = _abstract_params(model)
  expected = {path: _timm_key(path, shape) for path, shape in ours.items()}
  by_key = {key: path for path, (key, _, _) in expected.items()}

  available = dict(state_dict)
  if num_classes == 0:
    for key in [k for k in available if k.startswith("head.fc.")]:
      del available[key]
  missing = [key for key in by_key if key not in available]
  if missing:
    raise ValueError(f"{described}: missing key {missing[0]!r} (for param {'/'.join(by_key[missing[0]])}); "
                     f"{len(missing)} of {len(by_key)} expected keys missing. Does the model name "
                     f"(attention, activation, depth) match the checkpoint?")
  unexpected = [key for key in available if key not in by_key]
  if unexpected:
    raise ValueError(f"{described}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all); "
                     f"no param of the model maps to it. Does the model name match the checkpoint?")

  flat = {}
  for path, (key, timm_shape, transform) in expected.items():
    value = np.asarray(available[key])
    if path[-1] == "gain" and value.shape == timm_shape[:1]:  # a gain already flattened
      value = value.reshape(timm_shape)
    if value.shape != timm_shape:
      hint = ""
      if key.startswith("head.fc.") and value.ndim == len(timm_shape) and value.shape[1:] == timm_shape[1:]:
        hint = (f"; the checkpoint has {value.shape[0]} classes: pass num_classes={value.shape[0]}, "
                f"or num_classes=0 to drop its head")
      raise ValueError(f"{described}: key {key!r} has shape {tuple(value.shape)}, expected {timm_shape} "
                       f"(for param {'/'.join(path)} {ours[path]}){hint}")
    if value.dtype.kind not in "fV":  # 'V': ml_dtypes' bfloat16 as safetensors.numpy returns it
      raise ValueError(f"{described}: key {key!r} has dtype {value.dtype}, expected floating point")
    # np.array, not np.ascontiguousarray: the latter turns the scalar skipinit_gain into shape (1,).
    flat[path] = np.array(transform(value.astype(np.float32)), order="C")
    assert flat[path].shape == ours[path], (path, flat[path].shape, ours[path])
  return traverse_util.unflatten_dict(flat)


def _torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torch-saved state dict (or a timm training checkpoint holding one) as numpy float32 arrays."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"{path}: reading a torch checkpoint needs torch (pip install 'sw_zoo[parity]'); "
                      f"a .safetensors file needs only safetensors") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, Mapping):
    # timm train checkpoints: {'state_dict': ..., 'state_dict_ema': ..., 'optimizer': ...}
    for wrapper in ("state_dict", "model"):
      if isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
        break
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    key = key.removeprefix("module.")  # saved from DataParallel / DDP
    out[key] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()
  return out


def load_timm_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a timm checkpoint: ``.safetensors`` (numpy only) or a torch ``.pth``/``.pt``/``.bin`` state dict."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"timm checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if path.endswith((".pth", ".pt", ".bin", ".pth.tar")):
    return _torch_state_dict(path)
  raise ValueError(f"{path}: unknown checkpoint format; expected .safetensors, .pth, .pt or .bin")


def load_timm_checkpoint(path: str | os.PathLike, model_name: str, num_classes: int, **model_kwargs) -> Params:
  """Our params from a timm checkpoint file (see ``load_timm_state_dict``, ``convert_state_dict``)."""
  state_dict = load_timm_state_dict(path)
  try:
    return convert_state_dict(state_dict, model_name, num_classes=num_classes, **model_kwargs)
  except ValueError as e:
    raise ValueError(f"{os.fspath(path)}: {e}") from None
