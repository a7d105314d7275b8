"""Proof against a peer: our NFNets hold exactly timm's parameters and, given timm's weights
(converted by sw_zoo.models.convert_timm), produce timm's logits.

Needs torch + timm (the 'parity' extra); skipped cleanly without them. Nothing downloads: timm
models are built with pretrained=False and randomised here.
"""
import importlib.util
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:
  pytest.skip("timm is not installed (pip install 'sw_zoo[parity]')", allow_module_level=True)
safetensors_torch = pytest.importorskip("safetensors.torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

from sw_zoo.models.convert_timm import convert_state_dict, load_timm_checkpoint, resolve_model  # noqa: E402
from tests.timm_compat import import_timm  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Non-square, and not a multiple of 32: the last stages see odd sizes (ceil-mode average pool
# in the shortcut), and stride-2 SAME padding is asymmetric (dm_nfnet_f*).
HEIGHT, WIDTH = 144, 176
TOLERANCE = 2e-5  # measured max-abs ~2e-6; issue 3 asks for 1e-4, tighter catches single-parameter slips


@pytest.fixture(scope="module")
def timm():
  torch.set_num_threads(2)
  return import_timm()


def natural_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """uint8 [n, H, W, 3] images with image-like statistics: a smooth colour gradient background,
  a few filled ellipses and rectangles with soft shading, and mild sensor noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
  out = np.empty((n, height, width, 3), np.float32)
  for i in range(n):
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(3, 7)):
      colour = rng.uniform(0, 255, 3)
      cy, cx = rng.uniform(0, 1, 2)
      ry, rx = rng.uniform(0.05, 0.35, 2)
      if rng.random() < 0.5:
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = np.clip((1.0 - d) * 8.0, 0.0, 1.0)  # soft edge
      else:
        mask = ((np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)).astype(np.float32)
      shade = 0.8 + 0.4 * (yy - cy)[..., None]  # light from above
      img = img * (1 - mask[..., None]) + (colour * shade) * mask[..., None]
    img += rng.normal(0, 6.0, img.shape)
    out[i] = img
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images():
  return natural_images(2, HEIGHT, WIDTH)


def timm_input(images_u8: np.ndarray) -> "torch.Tensor":
  """What timm expects: (x / 255 - mean) / std, NCHW float32."""
  x = (images_u8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def randomised_timm_model(timm, name: str, seed: int = 0, **kwargs):
  """timm model in eval mode with every gain, bias and skipinit gain randomised.

  timm zero-initialises conv3's gain (or the skipinit gain) and every bias, so at init every
  residual branch is zero and biases are untested; conv weights keep their init, the head's is
  scaled up 10x.
  """
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if pname.endswith(".gain") or pname.endswith("skipinit_gain"):
        p.normal_(0.7, 0.2)
      elif pname.endswith(".bias"):
        p.normal_(0.0, 0.1)
      elif pname == "head.fc.weight":
        p.normal_(0.0, 0.1)  # logits of a trained tagger's size (std ~1), not init's ~0.1
  return model


def numpy_state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def timm_logits(model, images_u8) -> np.ndarray:
  with torch.no_grad():
    return model(timm_input(images_u8)).numpy()


_APPLY_CACHE = {}


def our_logits(model_name: str, params, images_u8, **model_kwargs) -> np.ndarray:
  key = (model_name, tuple(sorted(model_kwargs.items())))
  if key not in _APPLY_CACHE:
    model = resolve_model(model_name, 1000, **model_kwargs)
    _APPLY_CACHE[key] = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  return np.asarray(_APPLY_CACHE[key](params, jnp.asarray(images_u8)))


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("timm_name", ["eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2", "nfnet_l0",
                                       "dm_nfnet_f0", "nf_resnet26", "test_nfnet"])
def test_param_count_matches_timm(timm, timm_name):
  with torch.device("meta"):  # shapes only: no init, no memory
    theirs = sum(p.numel() for p in timm.create_model(timm_name, pretrained=False).parameters())
  model = resolve_model(timm_name, 1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes["params"])))
  assert ours == theirs, f"{timm_name}: ours {ours:,} params, timm {theirs:,}"


# --------------------------------------------------------------------------------------------
# Logits
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eca_l0(timm, images):
  model = randomised_timm_model(timm, "eca_nfnet_l0")
  return numpy_state_dict(model), timm_logits(model, images)


@pytest.mark.parametrize("conv_impl", ["einsum", "native"])
def test_eca_nfnet_l0_logits_match_timm(eca_l0, images, conv_impl):
  state_dict, expected = eca_l0
  params = convert_state_dict(state_dict, "eca_nfnet_l0", num_classes=1000)
  ours = our_logits("eca_nfnet_l0", params, images, conv_impl=conv_impl)
  assert ours.shape == expected.shape == (2, 1000)
  assert expected.std() > 0.05  # the test is not comparing near-constant outputs
  np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("timm_name,timm_kwargs,our_kwargs", [
    # SE (rd_ratio 0.25, ReLU inside) instead of ECA.
    ("nfnet_l0", {}, {}),
    # ReLU and its NF gain.
    ("eca_nfnet_l0", {"act_layer": "relu"}, {"act": "relu"}),
    # exact-erf GELU, SE 0.5, skipinit, gamma in the activations, TF SAME padding.
    ("dm_nfnet_f0", {}, {}),
    # 7x7 + max-pool stem, dense 3x3 convs, no final conv.
    ("nf_resnet26", {}, {}),
    # timm's toy NFNet: the variant hf-hub: warm starts are tested with (tests/test_hub.py).
    ("test_nfnet", {}, {}),
], ids=["nfnet_l0-se", "eca_nfnet_l0-relu", "dm_nfnet_f0-gelu", "nf_resnet26", "test_nfnet"])
def test_variant_logits_match_timm(timm, images, timm_name, timm_kwargs, our_kwargs):
  model = randomised_timm_model(timm, timm_name, seed=1, **timm_kwargs)
  expected = timm_logits(model, images)
  params = convert_state_dict(numpy_state_dict(model), timm_name, num_classes=1000, **our_kwargs)
  # 'native' compiles ~2x faster on CPU; the einsum grouped conv is checked on eca_nfnet_l0 above.
  ours = our_logits(timm_name, params, images, conv_impl="native", **our_kwargs)
  assert expected.std() > 0.05
  np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)


# --------------------------------------------------------------------------------------------
# Checkpoint files and conversion errors
# --------------------------------------------------------------------------------------------

def test_safetensors_checkpoint_gives_timm_logits(eca_l0, images, tmp_path, monkeypatch):
  state_dict, expected = eca_l0
  path = tmp_path / "eca_nfnet_l0.safetensors"
  safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state_dict.items()}, str(path))
  with monkeypatch.context() as m:
    m.setitem(sys.modules, "torch", None)  # a safetensors file must load without torch
    params = load_timm_checkpoint(path, "eca_nfnet_l0", num_classes=1000)
  ours = our_logits("eca_nfnet_l0", params, images, conv_impl="einsum")
  np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)


def test_torch_checkpoint_matches_safetensors(eca_l0, tmp_path):
  state_dict, _ = eca_l0
  # A timm training checkpoint: the weights under 'state_dict', saved from DataParallel.
  path = tmp_path / "checkpoint.pth.tar"
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()}},
             str(path))
  params = load_timm_checkpoint(path, "eca_nfnet_l0", num_classes=1000)
  reference = convert_state_dict(state_dict, "eca_nfnet_l0", num_classes=1000)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
    np.testing.assert_array_equal(a, b)


def test_conversion_errors_name_the_key(eca_l0):
  state_dict, _ = eca_l0
  missing = {k: v for k, v in state_dict.items() if k != "stages.2.3.attn_last.conv.weight"}
  with pytest.raises(ValueError, match=r"missing key 'stages\.2\.3\.attn_last\.conv\.weight'"):
    convert_state_dict(missing, "eca_nfnet_l0", num_classes=1000)
  extra = {**state_dict, "stages.0.0.attn_last.fc1.weight": np.zeros((64, 256, 1, 1), np.float32)}
  with pytest.raises(ValueError, match=r"unexpected key 'stages\.0\.0\.attn_last\.fc1\.weight'"):
    convert_state_dict(extra, "eca_nfnet_l0", num_classes=1000)
  with pytest.raises(ValueError, match=r"'head\.fc\.(weight|bias)' has shape \(1000,.*the checkpoint has 1000 classes"):
    convert_state_dict(state_dict, "eca_nfnet_l0", num_classes=10)
  # num_classes=0 drops the checkpoint's head: a backbone for transfer learning.
  backbone = convert_state_dict(state_dict, "eca_nfnet_l0", num_classes=0)
  assert "head" not in backbone and "final_conv" in backbone
