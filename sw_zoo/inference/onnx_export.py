"""NFNet -> ONNX, in the layout existing WD-tagger tools load.

The contract those tools rely on (SmilingWolf's wd-tagger space, kohya's
tag_images_by_wd14_tagger.py, the WebUI / ComfyUI WD14 plugins): `model.onnx` next to
`selected_tags.csv`; one input [batch, H, W, 3] float32, BGR, 0-255, already padded to a white
square and resized (tools read H and W from the input's shape); the first output [batch, tags]
holds sigmoid probabilities in `selected_tags.csv` row order (the last, `embedding`, holds the
pooled features, and a model with a box head has `box` between the two; the tools only read the
first). So the graph starts with BGR -> RGB,
our (x - mean) / std and NHWC -> NCHW, and ends with a sigmoid.

The graph is written from the model's own definition (`NFNetConfig` + params) with `onnx.helper`
rather than traced: jax2onnx, the tracing converter, pins orbax-checkpoint < 0.11.37 (we need
0.12.x) and its monkey-patched `flax.linen.avg_pool` rejects the explicit-padding,
count_include_pad=False pooling of the NF shortcut (BUILD_NOTES.md). Everything numerical is
computed by the model's own code: weight standardisation (`layers.standardize_weight`, folded
into plain conv weights at export), padding (`get_padding` / `get_same_padding`), bottleneck
widths and NF gains (`NFNetConfig`). tests/test_onnx.py checks onnxruntime against JAX to 1e-4
for every building block (stem types, ECA / SE, activations, skipinit, gamma_in_act, SAME
padding, dense and grouped convs) and every head and pooling of models/heads.py.

Heads (`NFNetConfig.heads`, `pool`): attention pooling feeds the tag head and the embedding as mean
pooling does; the heteroscedastic tag head exports its evaluation pass (the fixed draws of
`het_eval_noise` are initializers, so its scores match JAX for any batch size); with a box head the
outputs are [output, box [batch, 4] (x0, y0, x1, y1 in [0, 1] of the input square), embedding]:
the scores stay first, where WD tools read them.
"""
from __future__ import annotations

import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sw_zoo.models.layers import eca_kernel_size, get_activation, get_padding, get_same_padding, make_divisible, standardize_weight
from sw_zoo.models.heads import box_grid, eval_noise
from sw_zoo.models.nfnet import NFNetConfig, Stem, stem_plan

OPSET = 17  # onnxruntime >= 1.11; HardSwish needs 14. GELU is written with Erf (Gelu is opset 20).
INPUT_NAME = "input"
OUTPUT_NAME = "output"
EMBEDDING_NAME = "embedding"
BOX_NAME = "box"  # with a box head: [batch, 4], between OUTPUT_NAME and EMBEDDING_NAME


def het_eval_noise(cfg: NFNetConfig, num_tags: int) -> tuple[np.ndarray, np.ndarray]:
  """The heteroscedastic head's evaluation noise (`heads.eval_noise`, shared by every image):
  e_low [het_samples, het_rank] and e_diag [het_samples, num_tags], held by the graph as constants
  so its scores match JAX at any batch size."""
  e_low, e_diag = eval_noise(cfg.het_samples, cfg.het_rank, num_tags)
  return np.asarray(e_low, np.float32)[:, 0], np.asarray(e_diag, np.float32)[:, 0]


def wd_input(images_rgb: np.ndarray) -> np.ndarray:
  """The graph's input for preprocessed uint8 RGB images [N, S, S, 3]: float32 BGR 0-255, as the
  WD tools feed it."""
  return np.ascontiguousarray(images_rgb[..., ::-1], dtype=np.float32)


class _Graph:
  """Accumulates nodes and initializers; every helper returns the name of its output."""

  def __init__(self):
    import onnx  # the `export` extra

    self.onnx = onnx
    self.nodes: list[Any] = []
    self.initializers: list[Any] = []
    self._count = 0

  def _name(self, hint: str) -> str:
    self._count += 1
    return f"{hint}_{self._count}"

  def const(self, value: np.ndarray, hint: str) -> str:
    name = self._name(hint)
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
    out = self._name(hint or op_type.lower())
    self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, **attrs))
    return out


class _Builder:
  """Walks the NFNet forward pass (models/nfnet.py) emitting ONNX ops in NCHW."""

  def __init__(self, cfg: NFNetConfig, params: dict[str, Any]):
    self.cfg = cfg
    self.params = params
    self.g = _Graph()
    act = get_activation(cfg.act)
    # cfg.nonlinearity(): the NF gain is folded into the convs, or (gamma_in_act) applied to
    # activation outputs, in which case convs carry gamma 1.
    self.act_gain = act.gamma if cfg.gamma_in_act else None
    self.conv_gamma = 1.0 if cfg.gamma_in_act else act.gamma

  def act(self, x: str) -> str:
    g, kind = self.g, self.cfg.act
    if kind == "relu":
      y = g.op("Relu", [x])
    elif kind == "silu":
      y = g.op("Mul", [x, g.op("Sigmoid", [x])], "silu")
    elif kind == "hswish":
      y = g.op("HardSwish", [x])  # x * clip(x / 6 + 1 / 2, 0, 1) = jax.nn.hard_swish
    elif kind == "gelu":  # exact (erf) GELU, as the model's
      half = g.op("Mul", [x, g.const(np.float32(0.5), "half")])
      erf = g.op("Erf", [g.op("Mul", [x, g.const(np.float32(1 / math.sqrt(2)), "inv_sqrt2")])])
      y = g.op("Mul", [half, g.op("Add", [erf, g.const(np.float32(1.0), "one")])], "gelu")
    else:
      raise ValueError(f"ONNX export: activation {kind!r} is not supported")
    if self.act_gain is not None:
      y = self.scale(y, self.act_gain)
    return y

  def scale(self, x: str, factor: float) -> str:
    return self.g.op("Mul", [x, self.g.const(np.float32(factor), "scale")])

  def conv(self, x: str, hw: tuple[int, int], path: str, *, k: int, stride: int = 1, groups: int = 1,
           gamma: float | None = None) -> tuple[str, tuple[int, int]]:
    """A StdConv: the standardised weight, computed by the model's own function, as a Conv."""
    p = self.params[path]
    w = standardize_weight(jnp.asarray(p["kernel"], jnp.float32), jnp.asarray(p["gain"], jnp.float32),
                           gamma=self.conv_gamma if gamma is None else gamma, eps=self.cfg.std_conv_eps)
    w = np.asarray(jax.device_get(w)).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if self.cfg.padding == "symmetric":
      pad = get_padding(k, stride)
      (pt, pb), (pl, pr) = (pad, pad), (pad, pad)
    else:
      (pt, pb), (pl, pr) = (get_same_padding(n, k, stride) for n in hw)
    inputs = [x, self.g.const(w.astype(np.float32), f"{path}/w")]
    if "bias" in p:
      inputs.append(self.g.const(np.asarray(p["bias"], np.float32), f"{path}/b"))
    y = self.g.op("Conv", inputs, path.replace("/", "_"), kernel_shape=[k, k], strides=[stride, stride],
                  pads=[pt, pl, pb, pr], group=groups)
    out_hw = tuple((n + lo + hi - k) // stride + 1 for n, lo, hi in zip(hw, (pt, pl), (pb, pr)))
    return y, out_hw

  def eca(self, x: str, channels: int, path: str) -> str:
    g = self.g
    kernel = np.asarray(self.params[path]["kernel"], np.float32)
    k = eca_kernel_size(channels)
    pooled = g.op("Reshape", [g.op("GlobalAveragePool", [x]), g.const(np.array([-1, 1, channels], np.int64), "shape")])
    z = g.op("Conv", [pooled, g.const(kernel.reshape(1, 1, k), f"{path}/w")], "eca",
             kernel_shape=[k], pads=[(k - 1) // 2, (k - 1) // 2])
    gate = g.op("Reshape", [g.op("Sigmoid", [z]), g.const(np.array([-1, channels, 1, 1], np.int64), "shape")])
    return g.op("Mul", [x, gate])

  def se(self, x: str, channels: int, path: str) -> str:
    g = self.g
    rd = make_divisible(channels * self.cfg.se_rd_ratio, 8, round_limit=0.0)
    s = g.op("GlobalAveragePool", [x])
    for name, out in (("fc1", rd), ("fc2", channels)):
      p = self.params[f"{path}/{name}"]
      w = np.asarray(p["kernel"], np.float32).T.reshape(out, -1, 1, 1)  # [in, out] -> OI11
      s = g.op("Conv", [s, g.const(w, f"{path}/{name}/w"), g.const(np.asarray(p["bias"], np.float32), f"{path}/{name}/b")],
               name, kernel_shape=[1, 1])
      if name == "fc1":
        s = g.op("Relu", [s])  # plain ReLU, no NF gain, as the model's SqueezeExcite
    return g.op("Mul", [x, g.op("Sigmoid", [s])])

  def block(self, x: str, hw: tuple[int, int], in_chs: int, out_chs: int, stride: int, beta: float,
            path: str) -> tuple[str, tuple[int, int]]:
    cfg, g = self.cfg, self.g
    mid, groups = cfg.bottleneck(out_chs)
    out = self.scale(self.act(x), beta)
    shortcut = x
    if in_chs != out_chs or stride != 1:
      s, s_hw = out, hw
      if stride > 1:
        # nn.avg_pool(2x2, stride, pad bottom/right to even, count_include_pad=False).
        extra = [(-n) % 2 for n in hw]
        s = g.op("AveragePool", [s], "shortcut_pool", kernel_shape=[2, 2], strides=[stride, stride],
                 pads=[0, 0, extra[0], extra[1]], count_include_pad=0)
        s_hw = tuple((n + e - 2) // stride + 1 for n, e in zip(hw, extra))
      shortcut, _ = self.conv(s, s_hw, f"{path}/downsample", k=1)
    r, r_hw = self.conv(out, hw, f"{path}/conv1", k=1)
    r, r_hw = self.conv(self.act(r), r_hw, f"{path}/conv2", k=3, stride=stride, groups=groups)
    if cfg.extra_conv:
      r, r_hw = self.conv(self.act(r), r_hw, f"{path}/conv2b", k=3, groups=groups)
    r, r_hw = self.conv(self.act(r), r_hw, f"{path}/conv3", k=1)
    if cfg.attn == "eca":
      r = self.scale(self.eca(r, out_chs, f"{path}/attn_last"), cfg.attn_gain)
    elif cfg.attn == "se":
      r = self.scale(self.se(r, out_chs, f"{path}/attn_last"), cfg.attn_gain)
    if cfg.skipinit:
      r = g.op("Mul", [r, g.const(np.asarray(self.params[path]["skipinit_gain"], np.float32), "skipinit")])
    return g.op("Add", [shortcut, self.scale(r, cfg.alpha)], "residual"), r_hw

  def stem(self, x: str, hw: tuple[int, int]) -> tuple[str, tuple[int, int], int]:
    cfg = self.cfg
    k, chs, strides = stem_plan(cfg)
    for i, stride in enumerate(strides):
      if i:
        x = self.act(x)
      name = "conv" if len(chs) == 1 else f"conv{i + 1}"
      x, hw = self.conv(x, hw, f"stem/{name}", k=k, stride=stride)
    if cfg.stem_type.endswith("_pool"):
      x = self.g.op("MaxPool", [x], "stem_pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
      hw = tuple((n + 2 - 3) // 2 + 1 for n in hw)
    return x, hw, chs[-1]

  def dense(self, x: str, path: str) -> str:
    """A linen Dense ([in, out] kernel, bias) on [batch, in]."""
    p = self.params[path]
    return self.g.op("Gemm", [x, self.g.const(np.asarray(p["kernel"], np.float32), f"{path}/w"),
                              self.g.const(np.asarray(p["bias"], np.float32), f"{path}/b")], path.replace("/", "_"))

  def gelu_tanh(self, x: str) -> str:
    """flax nn.gelu (= jax.nn.gelu, approximate=True): x * 0.5 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    g = self.g
    cube = g.op("Mul", [g.op("Mul", [x, x]), x])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.const(np.float32(0.044715), "c")])])
    inner = g.op("Mul", [inner, g.const(np.float32(math.sqrt(2 / math.pi)), "sqrt_2_over_pi")])
    cdf = g.op("Mul", [g.op("Add", [g.op("Tanh", [inner]), g.const(np.float32(1.0), "one")]),
                       g.const(np.float32(0.5), "half")])
    return g.op("Mul", [x, cdf], "gelu")

  def pool(self, x: str, channels: int) -> str:
    """The pooled features [batch, C] of the final map (NCHW): mean, or heads.AttentionPool."""
    g = self.g
    if self.cfg.pool == "mean":
      return g.op("Flatten", [g.op("GlobalAveragePool", [x])], "pooled")
    if self.cfg.pool != "attention":
      raise ValueError(f"ONNX export: pooling {self.cfg.pool!r} is not supported")
    # Channel c = head * d + j, as the model's reshape of NHWC to [b, p, heads, d].
    query = np.asarray(self.params["attn_pool"]["query"], np.float32)
    heads, d = query.shape
    values = g.op("Reshape", [x, g.const(np.array([0, heads, d, -1], np.int64), "shape")], "attn_values")  # [B, n, d, P]
    scores = g.op("MatMul", [g.const(query.reshape(heads, 1, d), "attn_pool/query"), values])  # [B, n, 1, P]
    scores = g.op("Div", [scores, g.const(np.float32(math.sqrt(d)), "sqrt_d")])
    weights = g.op("Softmax", [scores], "attn_weights", axis=-1)
    pooled = g.op("MatMul", [values, g.op("Transpose", [weights], perm=[0, 1, 3, 2])])  # [B, n, d, 1]
    return g.op("Reshape", [pooled, g.const(np.array([-1, channels], np.int64), "shape")], "pooled")

  def softplus(self, x: str) -> str:
    """jax.nn.softplus = logaddexp(x, 0), overflow-free: relu(x) + log(1 + exp(-|x|))."""
    g = self.g
    tail = g.op("Log", [g.op("Add", [g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])]), g.const(np.float32(1.0), "one")])])
    return g.op("Add", [g.op("Relu", [x]), tail], "softplus")

  def heteroscedastic_probs(self, pooled: str, mu: str, num_classes: int, out: str) -> None:
    """heads.HeteroscedasticTagHead at train=False, writing sigmoid scores to `out`: with
    u_s = (mu + noise_scale (V(h) e_low[s] + d(h) * e_diag[s])) / temperature, the model's
    logit(mean_s sigmoid(u_s)) under the final sigmoid is mean_s sigmoid(u_s), computed so here.
    The samples axis is last: [B, T, S]."""
    cfg, g = self.cfg, self.g
    rank = cfg.het_rank
    width = int(np.shape(self.params["het/factors"]["kernel"])[-1])
    if width != num_classes * rank:
      # E.g. a head adapted to a tool's tag rows (tool_layouts.adapt_head adapts head/ only).
      raise ValueError(f"ONNX export: het/factors has {width} outputs, not {num_classes} tags x het_rank {rank}; "
                       "a heteroscedastic head exports only with the model's own tag rows (the bundle layout)")
    e_low, e_diag = het_eval_noise(cfg, num_classes)
    factors = g.op("Reshape", [self.dense(pooled, "het/factors"),
                               g.const(np.array([-1, num_classes, rank], np.int64), "shape")], "het_factors")
    low = g.op("MatMul", [factors, g.const(np.ascontiguousarray(e_low.T), "het/e_low")], "het_low")  # [B, T, S]
    diag = g.op("Unsqueeze", [self.softplus(self.dense(pooled, "het/diag")), g.const(np.array([2], np.int64), "axes")])
    noise = g.op("Add", [low, g.op("Mul", [diag, g.const(np.ascontiguousarray(e_diag.T), "het/e_diag")])], "het_noise")
    mu = g.op("Unsqueeze", [mu, g.const(np.array([2], np.int64), "axes")])
    u = g.op("Add", [mu, self.scale(noise, cfg.het_noise_scale)])
    u = g.op("Div", [u, g.const(np.float32(cfg.het_temperature), "temperature")], "het_samples")
    g.nodes.append(g.onnx.helper.make_node("ReduceMean", [g.op("Sigmoid", [u])], [out], name=out, axes=[2],
                                           keepdims=0))

  def box(self, x: str, hw: tuple[int, int], pooled: str, out: str) -> None:
    """heads.BoxHead on the final map `x` (NCHW, after the final activation) and the pooled
    features, writing [B, 4] boxes to `out`."""
    g = self.g
    maps = self.params["box_head/maps"]
    kernel = np.asarray(maps["kernel"], np.float32)  # [C, M]
    m = kernel.shape[1]
    logits = g.op("Conv", [x, g.const(kernel.T.reshape(m, -1, 1, 1), "box_head/maps/w"),
                           g.const(np.asarray(maps["bias"], np.float32), "box_head/maps/b")], "box_maps",
                  kernel_shape=[1, 1])
    logits = g.op("Reshape", [logits, g.const(np.array([0, m, -1], np.int64), "shape")])
    weights = g.op("Softmax", [logits], "box_weights", axis=-1)  # [B, M, P], positions row-major as the model's
    h, w = hw
    grid = box_grid(h, w)  # [P, 2] position centres, as the model's
    mean = g.op("MatMul", [weights, g.const(grid, "box_grid")], "box_mean")  # [B, M, 2]
    diff = g.op("Sub", [g.const(grid[None, None], "box_grid"), g.op("Unsqueeze", [mean, g.const(np.array([2], np.int64), "axes")])])
    var = g.op("ReduceSum", [g.op("Mul", [g.op("Unsqueeze", [weights, g.const(np.array([3], np.int64), "axes")]),
                                          g.op("Mul", [diff, diff])]), g.const(np.array([2], np.int64), "axes")],
               keepdims=0)  # [B, M, 2]
    spread = g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(1e-6), "eps")])], "box_spread")
    flat = lambda t: g.op("Reshape", [t, g.const(np.array([-1, 2 * m], np.int64), "shape")])
    located = g.op("Concat", [flat(mean), flat(spread), pooled], "box_located", axis=1)
    raw = g.op("Sigmoid", [self.dense(self.gelu_tanh(self.dense(located, "box_head/fc1")), "box_head/fc2")])
    first = g.op("Gather", [raw, g.const(np.array([0, 1], np.int64), "x0y0")], axis=1)
    second = g.op("Gather", [raw, g.const(np.array([2, 3], np.int64), "x1y1")], axis=1)
    g.nodes.append(g.onnx.helper.make_node("Concat", [g.op("Min", [first, second]), g.op("Max", [first, second])],
                                           [out], name=out, axis=1))

  def build(self, image_size: int, num_classes: int):
    cfg, g = self.cfg, self.g
    onnx = g.onnx
    mean = np.asarray(cfg.input_mean, np.float32) * np.float32(255.0)
    std = np.asarray(cfg.input_std, np.float32) * np.float32(255.0)
    rgb = g.op("Gather", [INPUT_NAME, g.const(np.array([2, 1, 0], np.int64), "bgr_to_rgb")], "rgb", axis=3)
    x = g.op("Div", [g.op("Sub", [rgb, g.const(mean, "mean")]), g.const(std, "std")], "normalised")
    x = g.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])

    x, hw, chs = self.stem(x, (image_size, image_size))
    stem_stride = Stem(cfg).stride
    expected_var = 1.0
    for si, (depth, out_chs) in enumerate(zip(cfg.depths, cfg.channels)):
      stage_stride = 1 if si == 0 and stem_stride > 2 else 2
      for bi in range(depth):
        x, hw = self.block(x, hw, chs, out_chs, stage_stride if bi == 0 else 1, expected_var ** -0.5,
                           f"stages_{si}_{bi}")
        chs = out_chs
        if bi == 0:
          expected_var = 1.0
        expected_var += cfg.alpha ** 2
    if cfg.feat_mult:
      x, hw = self.conv(x, hw, "final_conv", k=1)
    x = self.act(x)
    head = self.params["head"]
    num_features = int(np.shape(head["kernel"])[0])
    pooled = self.pool(x, num_features)  # dropout before the head is the identity at inference
    logits = self.dense(pooled, "head")
    if "heteroscedastic_tags" in cfg.heads:
      self.heteroscedastic_probs(pooled, logits, num_classes, OUTPUT_NAME)
    else:
      g.nodes.append(onnx.helper.make_node("Sigmoid", [logits], [OUTPUT_NAME], name=OUTPUT_NAME))
    value_info = lambda name, dims: onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", dims])
    outputs = [value_info(OUTPUT_NAME, num_classes)]
    if "box" in cfg.heads:
      # Second, after the scores WD tools read as output 0.
      self.box(x, hw, pooled, BOX_NAME)
      outputs.append(value_info(BOX_NAME, 4))
    # Last: the pooled features, so the onnxruntime backend of `Tagger` can embed images (search
    # index, near-duplicates) too.
    g.nodes.append(onnx.helper.make_node("Identity", [pooled], [EMBEDDING_NAME], name=EMBEDDING_NAME))
    outputs.append(value_info(EMBEDDING_NAME, num_features))
    graph = onnx.helper.make_graph(
        g.nodes, "sw_zoo_tagger",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", image_size, image_size, 3])],
        outputs, initializer=g.initializers)
    return graph


def to_onnx(cfg: NFNetConfig, params: dict[str, Any], *, image_size: int, metadata: dict[str, str] | None = None):
  """An onnx.ModelProto of the NFNet (`cfg`, params tree with a head) taking WD-tagger input."""
  import onnx

  flat = traverse_util.flatten_dict(params, sep="/")
  nested_by_layer: dict[str, dict[str, Any]] = {}
  for key, value in flat.items():
    layer, _, leaf = key.rpartition("/")
    nested_by_layer.setdefault(layer, {})[leaf] = value
  if "head" not in nested_by_layer:
    raise ValueError("ONNX export needs a model with a head (num_classes > 0)")
  # The heads' params must be those the config names: a box head the config does not list would
  # silently lose its output, and one it lists without params is a config from another run.
  wanted = {"attn_pool": cfg.pool == "attention", "het": "heteroscedastic_tags" in cfg.heads,
            "box_head": "box" in cfg.heads}
  for prefix, want in wanted.items():
    have = any(layer == prefix or layer.startswith(prefix + "/") for layer in nested_by_layer)
    if have != want:
      raise ValueError(f"ONNX export: the params {'have' if have else 'lack'} {prefix!r} but the config "
                       f"(heads={cfg.heads}, pool={cfg.pool!r}) {'does not use' if have else 'needs'} it")
  num_classes = int(np.shape(nested_by_layer["head"]["kernel"])[-1])
  graph = _Builder(cfg, nested_by_layer).build(int(image_size), num_classes)
  model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                 producer_name="sw_zoo")
  # Loadable by older onnxruntime builds in WD tools (the IR version follows the opset's era).
  model.ir_version = 8
  for key, value in (metadata or {}).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, str(value)
  onnx.checker.check_model(model)
  return model


def bundle_to_onnx_bytes(bundle, *, metadata: dict[str, str] | None = None) -> bytes:
  """model.onnx bytes for a loaded `Bundle` (graph at `bundle.image_size`: NFNet has no
  position-dependent params, so any size works); `metadata`: more metadata_props entries (the
  export's tag layout, its precision report)."""
  from sw_zoo.models import model_config

  spec = bundle.spec
  cfg = model_config(spec.name, act=spec.act, attn=spec.attn, **dict(spec.overrides))
  metadata = {
      "sw_zoo.model": spec.name,
      "sw_zoo.image_size": str(bundle.image_size),
      "sw_zoo.input": "NHWC float32 BGR 0-255, padded to a white square and resized to image_size",
      "sw_zoo.output": "sigmoid scores in selected_tags.csv row order",
      "sw_zoo.thresholds": json.dumps(bundle.thresholds),
      **({"sw_zoo.box": f"output {BOX_NAME!r}: x0, y0, x1, y1 in [0, 1] of the input square"}
         if "box" in cfg.heads else {}),
      **dict(metadata or {}),
  }
  return to_onnx(cfg, bundle.params, image_size=bundle.image_size, metadata=metadata).SerializeToString()
