"""sw_zoo.models: NF layers, NFNet variants, the name registry.

Kept fast on 2 CPU cores: test data comes from numpy (an eager jax.random.normal costs ~1.5 s of
XLA:CPU compile), parameter init uses 'rbg' keys (threefry init of even the nano net compiles for
~7 s, rbg ~2 s), networks run jitted, and full-size models only go through jax.eval_shape.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from sw_zoo import cli
from sw_zoo.models import ACTIVATIONS, VARIANTS, NFNetConfig, create_model, list_models, model_config
from sw_zoo import sharding
from sw_zoo.models import model_info, partitioning
from sw_zoo.models import conv_cpu
from sw_zoo.models.conv_cpu import conv2d_dense, conv2d_gemm
from sw_zoo.models.layers import (ECA, DropPath, StdConv, conv2d, eca_kernel_size, get_padding, get_same_padding,
                                  standardize_weight)
from sw_zoo.sharding import make_mesh


def _key(seed=0):
  return jax.random.key(seed, impl="rbg")


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _images(seed, batch, size):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3)), jnp.uint8)


def _n_params(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _init(model, x):
  return jax.jit(functools.partial(model.init, train=False))(_key(), x)["params"]


def _apply(model, **kw):
  """Jitted (params, x, rngs=None) -> model output; train / return_features are fixed by kw."""
  return _jitted_apply(model, tuple(sorted(kw.items())))


@functools.cache  # one compile per (model, flags) across tests
def _jitted_apply(model, kw):
  return jax.jit(lambda p, x, rngs=None: model.apply({"params": p}, x, rngs=rngs, **dict(kw)))


# ---------------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gamma_preserves_unit_variance(name):
  # gamma * act(z) has unit variance for z ~ N(0, 1). Variance, not second moment: the conv that
  # consumes it is weight-standardised (zero-mean filters), so the mean does not propagate.
  act = ACTIVATIONS[name]
  z = _normal(0, (1_000_000,))
  y = np.asarray(act.gamma * act.fn(z), np.float64)
  assert abs(y.var() - 1.0) < 1e-2


def test_published_gammas_are_close_to_exact():
  # DeepMind's constants were sampled; relu's exact value is (1/2 - 1/(2 pi))^-1/2.
  assert abs(ACTIVATIONS["relu"].gamma - (0.5 - 0.5 / math.pi) ** -0.5) < 2e-3
  assert 1.80 < ACTIVATIONS["hswish"].gamma < 1.83  # computed by quadrature in layers.py


# ---------------------------------------------------------------------------------- convolution

@pytest.mark.parametrize("size,cin,cout,groups,stride,same", [
    (9, 32, 32, 4, 1, False),   # odd spatial size
    (10, 32, 32, 4, 2, False),
    (9, 24, 48, 3, 2, False),   # Cout/G != Cin/G, odd size with stride 2
    (10, 32, 32, 4, 2, True),   # TF SAME: asymmetric (0, 1) padding
])
def test_einsum_grouped_conv_matches_native(size, cin, cout, groups, stride, same):
  x = _normal(1, (2, size, size, cin))
  w = _normal(2, (3, 3, cin // groups, cout), 1 / math.sqrt(9 * cin // groups))
  pad = (get_same_padding(size, 3, stride),) * 2 if same else get_padding(3, stride)

  def fwd_and_grads(impl):
    f = lambda x, w: conv2d(x, w, stride=stride, padding=pad, groups=groups, impl=impl)
    y = f(x, w)
    ct = _normal(3, y.shape)
    return (y,) + jax.grad(lambda x, w: jnp.vdot(f(x, w), ct), argnums=(0, 1))(x, w)

  for a, b in zip(jax.jit(fwd_and_grads, static_argnums=0)("einsum"),
                  jax.jit(fwd_and_grads, static_argnums=0)("native")):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k,cin,cout,groups,stride,same", [
    (3, 16, 16, 2, 1, False),   # grouped, stride 1
    (3, 16, 24, 2, 2, False),   # grouped, stride 2, Cout/G != Cin/G
    (3, 16, 16, 2, 2, True),    # TF SAME, uneven (low, high) padding on both (different) dims
    (3, 8, 8, 1, 2, True),      # dense 3x3 through the GEMM path
    (1, 24, 8, 1, 1, False),    # 1x1 == a dot (narrow output: dW^T branch)
    (1, 8, 24, 1, 1, False),    # 1x1, wide output (dW branch)
    (1, 16, 16, 4, 2, False),   # grouped strided 1x1
    (5, 8, 12, 2, 2, True),
])
def test_conv2d_gemm_matches_native(k, cin, cout, groups, stride, same):
  """conv_cpu.conv2d_gemm (custom VJP) == lax.conv_general_dilated: outputs and both grads."""
  h, w_ = 10, 9                 # even and odd sizes: SAME pads them differently for stride 2
  x = _normal(1, (2, h, w_, cin))
  w = _normal(2, (k, k, cin // groups, cout), 1 / math.sqrt(k * k * cin // groups))
  if same:
    pad = (get_same_padding(h, k, stride), get_same_padding(w_, k, stride))
  else:
    p = get_padding(k, stride)
    pad = ((p, p), (p, p))
  native = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  gemm = lambda x, w: conv2d_gemm(x, w, stride, pad, groups)

  def fwd_and_grads(f):
    y = f(x, w)
    ct = _normal(3, y.shape)
    return (y,) + jax.grad(lambda x, w: jnp.vdot(f(x, w), ct), argnums=(0, 1))(x, w)

  for a, b in zip(jax.jit(fwd_and_grads, static_argnums=0)(gemm), jax.jit(fwd_and_grads, static_argnums=0)(native)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k,cin,cout,stride,same,batch,patch_bytes", [
    (3, 3, 8, 2, False, 4, 1 << 20),     # the stem's first conv: 3 channels, stride 2
    (3, 8, 16, 1, False, 6, 1 << 20),    # stride 1, all rows in one scan step
    (3, 8, 8, 2, True, 6, 4000),         # TF SAME uneven padding, one output row per scan step
    (7, 3, 8, 2, False, 3, 9000),        # NF-ResNet's 7x7 stem, 5 output rows in 5 steps
])
def test_conv2d_dense_matches_native(k, cin, cout, stride, same, batch, patch_bytes, monkeypatch):
  """conv_cpu.conv2d_dense (filter gradient as GEMMs over bands of output rows) == XLA's conv and
  its grads, however many rows each scan step takes."""
  monkeypatch.setattr(conv_cpu, "_FILTER_GRAD_PATCH_BYTES", patch_bytes)
  h, w_ = 10, 9
  x = _normal(1, (batch, h, w_, cin))
  w = _normal(2, (k, k, cin, cout), 1 / math.sqrt(k * k * cin))
  if same:
    pad = (get_same_padding(h, k, stride), get_same_padding(w_, k, stride))
  else:
    p = get_padding(k, stride)
    pad = ((p, p), (p, p))
  native = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dense = lambda x, w: conv2d_dense(x, w, stride, pad)

  def fwd_and_grads(f):
    y = f(x, w)
    ct = _normal(3, y.shape)
    return (y,) + jax.grad(lambda x, w: jnp.vdot(f(x, w), ct), argnums=(0, 1))(x, w)

  for a, b in zip(fwd_and_grads(dense), fwd_and_grads(native)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_conv2d_dense_keeps_a_data_sharded_batch_sharded():
  """The filter gradient's scan runs over rows, so a batch split over devices is never gathered."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.device_put(_normal(1, (16, 12, 12, 8)), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  w = _normal(2, (3, 3, 8, 16), 0.1)
  grads = jax.jit(jax.grad(lambda x, w: (conv2d_dense(x, w, 1, ((1, 1), (1, 1))) ** 2).sum(), argnums=(0, 1)))
  assert "all-gather" not in grads.lower(x, w).compile().as_text()
  native = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  expected = jax.grad(lambda x, w: (native(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
  for a, b in zip(grads(x, w), expected):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_standardize_weight_grads_match_reductions():
  """The matvec form of standardize_weight has the gradients of the plain mean/var form."""
  kernel = _normal(4, (3, 3, 8, 16))
  gain = 1.0 + 0.1 * _normal(5, (16,))

  def reference(kernel, gain):
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
    return (kernel - mean) * jax.lax.rsqrt(var + 1e-5) * (gain * (1.7 / math.sqrt(72)))

  ct = _normal(6, kernel.shape)
  ours = lambda k, g: standardize_weight(k, g, gamma=1.7, eps=1e-5)
  np.testing.assert_allclose(ours(kernel, gain), reference(kernel, gain), atol=1e-6, rtol=1e-5)
  grads = lambda f: jax.grad(lambda k, g: jnp.vdot(f(k, g), ct), argnums=(0, 1))(kernel, gain)
  for a, b in zip(grads(ours), grads(reference)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_padding_rule_matches_timm():
  assert [get_padding(k, s) for k, s in [(1, 1), (3, 1), (3, 2), (7, 2)]] == [0, 1, 1, 3]
  # timm pad_same / TF SAME: stride 1 is symmetric; stride 2 puts the odd pixel bottom/right.
  assert [get_same_padding(n, k, s) for n, k, s in [(10, 3, 1), (10, 3, 2), (9, 3, 2), (10, 1, 1), (224, 7, 2)]] \
      == [(1, 1), (0, 1), (1, 1), (0, 0), (2, 3)]


@pytest.mark.parametrize("size", [8, 9])
def test_stdconv_same_padding_matches_xla_same(size):
  conv = StdConv(6, 3, stride=2, groups=2, padding="same", eps=0.0, conv_impl="einsum")
  x = _normal(13, (1, size, size, 4))
  v = jax.jit(conv.init)(_key(), x)
  w = standardize_weight(v["params"]["kernel"], v["params"]["gain"], gamma=1.0, eps=0.0)
  ref = jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=2)
  np.testing.assert_allclose(jax.jit(conv.apply)(v, x), ref, atol=1e-5)


def test_standardize_weight():
  kernel = _normal(4, (3, 3, 8, 5), 3.0) + 1.0
  gain = jnp.arange(1.0, 6.0)
  w = standardize_weight(kernel, gain, gamma=1.7, eps=0.0)
  fan_in = 3 * 3 * 8
  np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(w.std(axis=(0, 1, 2)), gain * 1.7 / math.sqrt(fan_in), rtol=1e-5)
  # Per-output-channel affine changes of the raw kernel do not change the effective weight.
  w2 = standardize_weight(kernel * jnp.arange(2.0, 7.0) - 4.0, gain, gamma=1.7, eps=0.0)
  np.testing.assert_allclose(w2, w, atol=1e-6)


def test_stdconv_layer():
  conv = StdConv(6, 3, stride=2, groups=2, gamma=1.5, eps=1e-5)
  x = _normal(5, (2, 8, 8, 4))
  v = jax.jit(conv.init)(_key(), x)
  p = v["params"]
  assert p["kernel"].shape == (3, 3, 2, 6) and p["gain"].shape == (6,) and p["bias"].shape == (6,)
  k = np.asarray(p["kernel"], np.float64)
  w_ref = (k - k.mean(axis=(0, 1, 2))) / np.sqrt(k.var(axis=(0, 1, 2)) + 1e-5) * 1.5 / math.sqrt(18)
  y_ref = jax.lax.conv_general_dilated(x, jnp.asarray(w_ref, jnp.float32), (2, 2), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
  np.testing.assert_allclose(jax.jit(conv.apply)(v, x), y_ref, atol=1e-5)


# ---------------------------------------------------------------------------------- attention, drop path

def test_eca_kernel_size_and_gate():
  assert [eca_kernel_size(c) for c in (16, 32, 256, 512, 1536)] == [3, 3, 5, 5, 5]
  x = _normal(6, (2, 4, 4, 256))
  v = jax.jit(ECA().init)(_key(), x)
  k = np.asarray(v["params"]["kernel"])
  assert k.shape == (5,)
  y = np.asarray(x).mean(axis=(1, 2))
  z = np.stack([np.correlate(np.pad(row, 2), k, mode="valid") for row in y])  # Conv1d == correlation
  gate = 1.0 / (1.0 + np.exp(-z))
  np.testing.assert_allclose(jax.jit(ECA().apply)(v, x), np.asarray(x) * gate[:, None, None, :], atol=1e-5)


def test_drop_path():
  x = jnp.ones((64, 2, 2, 3))
  dp = DropPath(0.5)
  assert dp.apply({}, x, deterministic=True) is x
  y = jax.jit(lambda x, k: dp.apply({}, x, deterministic=False, rngs={"drop_path": k}))(x, _key(7))
  per_sample = np.asarray(y[:, 0, 0, 0])
  assert set(np.unique(per_sample)) == {0.0, 2.0}  # whole samples dropped, survivors rescaled
  assert np.all(np.asarray(y) == per_sample[:, None, None, None])


# ---------------------------------------------------------------------------------- NFNet

@pytest.fixture(scope="module")
def nano_eca():
  model = create_model("nano", num_classes=7, attn="eca")
  x = _images(8, 2, 64)
  return model, _init(model, x), x


def test_forward_and_features(nano_eca):
  model, params, x = nano_eca
  run = _apply(model, train=False, return_features=True)
  f = run(params, x)
  cfg = model.cfg
  assert f["logits"].shape == (2, 7) and f["logits"].dtype == jnp.float32
  assert np.all(np.isfinite(f["logits"]))
  assert f["stem"].shape == (2, 32, 32, cfg.stem_chs)  # '3x3' stem: stride 2
  assert [s.shape for s in f["stages"]] == [(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 32), (2, 2, 2, 64)]
  assert f["pooled"].shape == (2, cfg.num_features)
  # The model normalises [0, 255] input itself: uint8 and float give the same output.
  np.testing.assert_allclose(run(params, x.astype(jnp.float32))["logits"], f["logits"], atol=1e-6)


def test_residual_branches_start_at_zero(nano_eca):
  # Every conv3 gain starts at 0, so at init no residual branch contributes: changing the branch
  # convs before conv3 cannot change the output.
  model, params, x = nano_eca
  blocks = [k for k in params if k.startswith("stages_")]
  assert blocks and all(not np.any(params[b]["conv3"]["gain"]) for b in blocks)
  perturbed = {k: ({**v, "conv1": {**v["conv1"], "kernel": v["conv1"]["kernel"] * -3.0 + 1.0}}
                   if k in blocks else v) for k, v in params.items()}
  run = _apply(model, train=False, return_features=True)
  np.testing.assert_array_equal(run(perturbed, x)["logits"], run(params, x)["logits"])


def test_train_mode_is_stochastic_and_needs_rngs(nano_eca):
  _, params, x = nano_eca
  model = create_model("nano", num_classes=7, attn="eca", drop_rate=0.5, drop_path_rate=0.5)
  params = jax.tree.map(lambda p: p + 0.1, params)  # open the residual branches
  run = _apply(model, train=True)
  rngs = lambda k: {"dropout": _key(k), "drop_path": _key(k + 1)}
  assert not np.allclose(run(params, x, rngs(1)), run(params, x, rngs(3)))
  with pytest.raises(Exception, match='PRNG for "drop_path"'):
    jax.eval_shape(lambda p: model.apply({"params": p}, x, train=True, rngs={"dropout": _key()}), params)


def test_conv_impls_agree_in_the_network(nano_eca):
  model, params, x = nano_eca
  params = jax.tree.map(lambda p: p + 0.05, params)
  outs = [_apply(dataclasses.replace(model, conv_impl=impl), train=False, return_features=True)(params, x)
          for impl in ("native", "einsum")]
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


def test_bfloat16_compute_and_remat(nano_eca):
  model, params, x = nano_eca
  params = jax.tree.map(lambda p: p + 0.05, params)
  bf16 = dataclasses.replace(model, dtype=jnp.bfloat16, remat=True)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  ref = _apply(model, train=False, return_features=True)(params, x)["logits"]
  out = _apply(bf16, train=False)(params, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=0.1, atol=0.1 * float(np.abs(ref).max()))
  # remat with a static `train` must trace under grad (compiling it here would cost ~5 s).
  g = jax.eval_shape(jax.grad(lambda p: bf16.apply({"params": p}, x, train=True).sum()), params)
  assert jax.tree.structure(g) == jax.tree.structure(params)


def test_se_attention_params():
  m = create_model("nano", num_classes=3, attn="se")
  shapes = jax.eval_shape(lambda: m.init(_key(), _images(0, 1, 32), train=False))["params"]
  se = shapes["stages_3_0"]["attn_last"]
  assert se["fc1"]["kernel"].shape == (64, 32) and se["fc2"]["kernel"].shape == (32, 64)  # rd_ratio 0.5


def test_head_prior_and_embedding_only():
  x = _images(12, 2, 32)
  m = create_model("nano", num_classes=4, head_prior_prob=0.01)
  # Only the head's init survives dead-code elimination, so this compiles in a blink.
  head = jax.jit(lambda k: m.init(k, x, train=False)["params"]["head"])(_key())
  assert head["kernel"].shape == (m.cfg.num_features, 4)
  np.testing.assert_allclose(head["bias"], math.log(0.01 / 0.99), rtol=1e-6)
  backbone = create_model("nano", num_classes=0)
  pb = jax.eval_shape(lambda: backbone.init(_key(), x, train=False))["params"]
  assert "head" not in pb
  emb = jax.eval_shape(lambda p: backbone.apply({"params": p}, x, train=False), pb)
  assert emb.shape == (2, backbone.cfg.num_features) and emb.dtype == jnp.float32


def test_gamma_in_act_moves_the_gain_out_of_the_convs(nano_eca):
  # timm gamma_in_act (dm_nfnet_f*): act(x) * gamma feeds unscaled convs. Inside the blocks that
  # is the same function as folding gamma into the convs; the differences are the stem's first
  # conv and final_conv (no gamma: they read no activation) and the final act (scaled). So the
  # folded model with those two gains divided by gamma and the head multiplied by it agrees.
  _, _, x = nano_eca
  # The dm_nfnet_f* settings on the nano geometry (SE, TF SAME padding, skipinit).
  cfg = dict(attn="se", padding="same", skipinit=True, conv_impl="native")  # native: faster compile
  in_act = create_model("nano", num_classes=7, gamma_in_act=True, **cfg)
  folded = create_model("nano", num_classes=7, gamma_in_act=False, **cfg)
  # Random params near 1 (numpy: no init compile), so every gain, skipinit gain and bias matters.
  shapes = jax.eval_shape(lambda: in_act.init(_key(), x, train=False))["params"]
  leaves, treedef = jax.tree.flatten(shapes)
  p = jax.tree.unflatten(treedef, [1.0 + _normal(i, s.shape, 0.1) for i, s in enumerate(leaves)])
  g = ACTIVATIONS["silu"].gamma
  q = {**p, "stem": {"conv": {**p["stem"]["conv"], "gain": p["stem"]["conv"]["gain"] / g}},
       "final_conv": {**p["final_conv"], "gain": p["final_conv"]["gain"] / g},
       "head": {**p["head"], "kernel": p["head"]["kernel"] * g}}
  a = _apply(in_act, train=False, return_features=True)(p, x)
  b = _apply(folded, train=False, return_features=True)(q, x)
  np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-4, atol=1e-4 * float(np.abs(a["logits"]).max()))
  np.testing.assert_allclose(a["pooled"], b["pooled"] * g, rtol=1e-4, atol=1e-5)
  assert p["stages_0_0"]["skipinit_gain"].shape == ()


# ---------------------------------------------------------------------------------- full-size variants

# timm's published sizes (M params, 1000 classes): eca_nfnet_l0 24.1, l1 41.4, l2 56.7.
# Exact counts here: 24,143,924 / 41,407,728 / 56,722,348 (issue 3 compares with real timm).
@pytest.mark.parametrize("name,millions", [("l0", 24.1), ("l1", 41.4), ("l2", 56.7)])
def test_eca_nfnet_param_counts(name, millions):
  model = create_model(name, num_classes=1000, act="silu", attn="eca")
  shapes = jax.eval_shape(lambda: model.init(_key(), jnp.zeros((1, 64, 64, 3)), train=False))
  assert round(_n_params(shapes) / 1e6, 1) == millions


# timm 1.0 (dm_nfnet_f0..f3: 71.49 / 132.63 / 193.78 / 254.92 M; nf_resnet26/50: 16.0 / 25.56 M).
@pytest.mark.parametrize("name,count", [
    ("f0", 71_489_284), ("f1", 132_634_256), ("f2", 193_779_228), ("f3", 254_924_200),
    ("nf_resnet26", 15_995_176), ("nf_resnet50", 25_557_032),
])
def test_timm_variant_param_counts(name, count):
  assert model_info.count_params(create_model(name, num_classes=1000)) == count


def test_dm_nfnet_f0_structure():
  model = create_model("f0", num_classes=1000)
  cfg = model.cfg
  assert (cfg.act, cfg.attn, cfg.padding, cfg.gamma_in_act, cfg.skipinit) == ("gelu", "se", "same", True, True)
  x = jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(_key(), x, train=False), x)["params"]
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, train=False, return_features=True), params, x)
  assert [s.shape[1:] for s in out["stages"]] == [(48, 48, 256), (24, 24, 512), (12, 12, 1536), (6, 6, 1536)]
  b = params["stages_2_5"]
  assert b["conv2"]["kernel"].shape == (3, 3, 128, 768)  # 6 groups of 128 (bottle_ratio 0.5)
  assert b["attn_last"]["fc1"]["kernel"].shape == (1536, 768) and b["skipinit_gain"].shape == ()
  assert params["final_conv"]["kernel"].shape == (1, 1, 1536, 3072)


def test_nf_resnet50_structure():
  model = create_model("nf_resnet50", num_classes=1000)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(_key(), x, train=False), x)["params"]
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, train=False, return_features=True), params, x)
  assert out["stem"].shape == (1, 56, 56, 64)  # 7x7/2 conv + 3x3/2 max pool
  assert [s.shape[1:] for s in out["stages"]] == [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]
  assert params["stem"]["conv"]["kernel"].shape == (7, 7, 3, 64)
  assert "final_conv" not in params and params["head"]["kernel"].shape == (2048, 1000)
  assert set(params["stages_0_0"]) == {"downsample", "conv1", "conv2", "conv3"}  # no conv2b, no attention
  assert params["stages_0_0"]["conv2"]["kernel"].shape == (3, 3, 64, 64)  # dense 3x3


def test_l2_silu_eca_eval_shape_384():
  model = create_model("l2_silu_eca", num_classes=1000, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 384, 384, 3), jnp.uint8)
  params = jax.eval_shape(lambda x: model.init(_key(), x, train=False), x)["params"]
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, train=False, return_features=True), params, x)
  assert out["logits"].shape == (2, 1000) and out["logits"].dtype == jnp.float32
  assert out["pooled"].shape == (2, 3072)
  assert [s.shape[1:] for s in out["stages"]] == [(96, 96, 256), (48, 48, 512), (24, 24, 1536), (12, 12, 1536)]
  assert params["stages_2_17"]["conv2"]["kernel"].shape == (3, 3, 64, 384)  # 6 groups of 64
  assert params["stages_2_17"]["attn_last"]["kernel"].shape == (5,)


# ---------------------------------------------------------------------------------- registry

def test_registry_names_and_overrides():
  assert set(list_models()) == set(VARIANTS) >= {"l0", "l1", "l2", "tiny", "nano", "f0", "f3", "nf_resnet50"}
  # Keys with '_' parse by longest prefix; a suffix overrides the variant's own act/attn.
  assert model_config("nf_resnet50_silu_eca") == model_config("nf_resnet50", act="silu", attn="eca")
  assert model_config("f0").attn == "se" and model_config("f0_relu").attn == "se"
  assert model_config("f0", attn="none").attn is None
  assert model_config("l2_silu_eca") == model_config("l2", act="silu", attn="eca")
  assert model_config("l0_relu").attn is None and model_config("l0_relu").act == "relu"
  assert model_config("l1", attn="none").attn is None
  assert model_config("l1", drop_path_rate=0.2).drop_path_rate == 0.2
  with pytest.raises(ValueError, match="attn"):
    model_config("l0_silu_eca", attn="se")
  with pytest.raises(ValueError, match="not_a_field"):
    model_config("l0", not_a_field=1)
  with pytest.raises(ValueError, match="unknown model"):
    create_model("resnet50", num_classes=1)
  with pytest.raises(ValueError, match="unknown model"):
    model_config("l0_mish")


def test_config_validation_names_the_key():
  with pytest.raises(ValueError, match="NFNetConfig.act"):
    NFNetConfig(depths=(1,), channels=(64,), act="swish")
  with pytest.raises(ValueError, match="NFNetConfig.group_size"):
    NFNetConfig(depths=(1,), channels=(64,), group_size=64)  # the bottleneck is only 16 wide
  # Lists (as from a ConfigDict) become tuples, keeping the config hashable.
  assert hash(NFNetConfig(depths=[1, 1], channels=[32, 64], stem_chs=16, group_size=8))


# ---------------------------------------------------------------------------------- partitioning

def test_logical_axes_box_the_same_params():
  conv = StdConv(8, 3, groups=2)
  x = _normal(14, (1, 6, 6, 4))
  plain = jax.jit(conv.init)(_key(), x)["params"]
  boxed = jax.jit(conv.clone(logical_axes=True).init)(_key(), x)["params"]
  assert isinstance(boxed["kernel"], nn.LogicallyPartitioned)
  assert boxed["kernel"].names == ("conv_h", "conv_w", "conv_in", "conv_out") and boxed["gain"].names == ("conv_out",)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(nn.unbox(boxed))):
    np.testing.assert_array_equal(a, b)
  # Boxed params apply like plain ones.
  np.testing.assert_array_equal(jax.jit(conv.apply)({"params": boxed}, x), jax.jit(conv.apply)({"params": plain}, x))


def test_abstract_params_name_every_param():
  model = create_model("f0", num_classes=1000)
  assert not model.logical_axes  # plain init stays plain
  abstract = partitioning.abstract_params(model)
  boxes = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxes and all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
  assert all(len(b.names) == b.value.ndim and set(b.names) <= set(partitioning.LOGICAL_AXES) for b in boxes)
  specs = partitioning.logical_specs(abstract)
  assert specs["head"] == {"kernel": P("embed", "tags"), "bias": P("tags")}
  assert specs["stages_1_0"]["skipinit_gain"] == P()


def test_fsdp_rules_shard_params_and_match_replicated_forward(nano_eca):
  model, params, x = nano_eca
  native = model.clone(conv_impl="native")  # compiles faster; agrees with einsum (tested above)
  mesh = make_mesh([("data", 2), ("fsdp", 4)])
  abstract = partitioning.abstract_params(model, x.shape)
  fsdp = sharding.param_shardings(abstract, mesh, sharding.FSDP_RULES)
  dp = sharding.param_shardings(abstract, mesh, sharding.DATA_PARALLEL_RULES)
  assert jax.tree.structure(fsdp) == jax.tree.structure(params)
  assert all(s.is_fully_replicated for s in jax.tree.leaves(dp))
  assert fsdp["stages_3_0"]["conv2"]["kernel"].spec == P(None, None, None, "fsdp")
  assert fsdp["final_conv"]["gain"].spec == P("fsdp")
  assert fsdp["stages_3_0"]["attn_last"]["kernel"].spec == P(None)  # ECA taps: replicated
  # 7 tags do not split 4 ways: the head splits along its 64-wide embedding instead.
  assert fsdp["head"]["kernel"].spec == P("fsdp", None) and fsdp["head"]["bias"].spec == P(None)

  # Init sharded from the start gives the same values as the plain init.
  sharded = jax.jit(lambda k: native.init(k, x, train=False)["params"], out_shardings=fsdp)(_key())
  big = sharded["stages_3_0"]["conv1"]["kernel"]
  assert big.addressable_shards[0].data.shape == big.shape[:3] + (big.shape[3] // 4,)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)

  params = jax.tree.map(lambda p: p + 0.05, params)  # open the residual branches
  sharded = jax.device_put(params, fsdp)
  x_sh = jax.device_put(x, NamedSharding(mesh, P("data")))
  fwd = jax.jit(lambda p, x: native.apply({"params": p}, x, train=False), in_shardings=(fsdp, x_sh.sharding))
  ref = _apply(model, train=False)(params, x)
  np.testing.assert_allclose(fwd(sharded, x_sh), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


# ---------------------------------------------------------------------------------- model_info / CLI

def test_model_info_params_and_flops():
  info = model_info.model_info("l0", act="silu", attn="eca", image_size=192)
  assert info["params"] == 24_143_924 and info["num_features"] == 2304
  big = model_info.model_info("l0_silu_eca", image_size=384)
  assert info["flops"] > 0 and 3.5 < big["flops"] / info["flops"] < 4.5
  assert big["gmacs"] == pytest.approx(big["flops"] / 2e9)


def test_models_cli(capsys):
  assert cli.main(["models"]) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in ("l0", "f3", "nf_resnet50", "tiny"))
  assert cli.main(["models", "nano_relu", "--image-size", "64", "--num-classes", "10", "--attn", "se"]) == 0
  out = capsys.readouterr().out
  model = create_model("nano_relu", num_classes=10, attn="se")
  assert f"{model_info.count_params(model):,}" in out and "GFLOPs" in out and "act=relu, attn=se" in out
  assert cli.main(["models", "resnet50"]) == 2
  assert "unknown model" in capsys.readouterr().err
