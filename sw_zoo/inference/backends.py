"""The forward pass of a `Tagger`: JAX (the model's own code, jitted) or onnxruntime (the exported
graph), behind one call: uint8 RGB images [N, S, S, 3] -> (sigmoid scores [N, T], pooled features
[N, F], boxes [N, 4] or None), float32; boxes (x0, y0, x1, y1 in [0, 1] of the input square) come
from a model with a box head.

    forward = make_forward(bundle, "auto")   # -> JaxForward or OnnxForward
    pending = forward.launch(images)           # starts the work, returns at once
    scores, pooled, boxes = pending.result()

`launch` returns before the work is done so `Tagger` can decode the next batch meanwhile: JAX
dispatches asynchronously by itself; onnxruntime's `run` blocks, so it runs on one worker thread.

Which backend "auto" picks (`choose`): on a machine whose JAX backend is the CPU, onnxruntime when
it is installed (BUILD_NOTES.md, Inference: the same exported model tags more images per second
there than XLA:CPU runs the jitted model); on a GPU/TPU, JAX (the model in its trained dtype on the
accelerator). A bundle without model.onnx gets its graph built in memory (`onnx_export`, a few
seconds), which needs the `onnx` package besides onnxruntime.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
from typing import Any

import numpy as np

from sw_zoo.evaluation import box_metrics

BACKENDS = ("auto", "jax", "onnx")
TTA_MODES = (None, "none", "flip")


def check_tta(tta: str | None) -> bool:
  """Whether `tta` asks for the flip average; ValueError naming the value otherwise."""
  if tta not in TTA_MODES:
    raise ValueError(f"tta={tta!r}: expected None, 'none' or 'flip'")
  return tta == "flip"


def _importable(module: str) -> bool:
  try:
    __import__(module)
  except ImportError:
    return False
  return True


def onnx_available(bundle_path: str | None = None) -> bool:
  """Whether onnxruntime can run `bundle_path`'s model: its model.onnx, or one built in memory
  (which needs the `onnx` package too)."""
  from sw_zoo.inference.bundle import ONNX_FILE

  has_graph = bundle_path is not None and os.path.isfile(os.path.join(bundle_path, ONNX_FILE))
  return _importable("onnxruntime") and (has_graph or _importable("onnx"))


def choose(requested: str = "auto", bundle_path: str | None = None) -> str:
  """The backend to use for `requested` ('auto', 'jax' or 'onnx'); see the module docstring."""
  if requested not in BACKENDS:
    raise ValueError(f"backend {requested!r}: expected one of {', '.join(BACKENDS)}")
  if requested == "onnx" and not onnx_available(bundle_path):
    raise ImportError("backend 'onnx' needs onnxruntime (and onnx for a bundle without model.onnx): "
                      "pip install -e '.[export]'")
  if requested != "auto":
    return requested
  import jax

  return "onnx" if jax.default_backend() == "cpu" and onnx_available(bundle_path) else "jax"


class _Done:
  """An already finished result (JAX arrays are fetched lazily by `result`)."""

  def __init__(self, outputs):
    self._outputs = outputs

  def result(self):
    return tuple(None if x is None else np.asarray(x, np.float32) for x in self._outputs)


class JaxForward:
  """The bundle's model, jitted on one device. Batches are padded to `batch_size`, or to the next
  power of two below it, so at most log2(batch_size) + 1 shapes ever compile."""

  name = "jax"

  def __init__(self, bundle: Any, *, dtype: Any = None, device: Any = None):
    import jax

    self.device = device or jax.devices()[0]
    if dtype is None:  # XLA:CPU has no fast bfloat16 convolutions
      dtype = "float32" if self.device.platform == "cpu" else bundle.spec.dtype
    self.model = model = bundle.spec.create(dtype=dtype)
    self.params = jax.device_put(bundle.params, self.device)
    self.embedding_dim = model.cfg.num_features

    self.has_box = has_box = "box" in model.cfg.heads

    def forward(params, images, flip):
      def once(x):
        features = model.apply({"params": params}, x, train=False, return_features=True)
        box = features["box"].astype("float32") if has_box else None
        return jax.nn.sigmoid(features["logits"].astype("float32")), features["pooled"].astype("float32"), box
      probs, pooled, box = once(images)
      if flip:  # the mean of the image's and its mirror's, as `sw-zoo eval --tta flip`
        probs2, pooled2, box2 = once(images[:, :, ::-1, :])
        probs, pooled = 0.5 * (probs + probs2), 0.5 * (pooled + pooled2)
        if has_box:
          box = 0.5 * (box + box_metrics.flip_box(box2, xp=jax.numpy))
      return probs, pooled, box

    self._jit = jax.jit(forward, static_argnums=2)
    self._jax = jax

  def padded_size(self, n: int, batch_size: int) -> int:
    return batch_size if n >= batch_size else min(batch_size, 1 << (n - 1).bit_length())

  def launch(self, images: np.ndarray, *, batch_size: int, flip: bool = False) -> _Done:
    n = len(images)
    size = self.padded_size(n, batch_size)
    if size != n:
      images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]), images.dtype)])
    probs, pooled, box = self._jit(self.params, self._jax.device_put(images, self.device), flip)
    return _Done((probs[:n], pooled[:n], None if box is None else box[:n]))

  def close(self) -> None:
    pass


class OnnxForward:
  """The bundle's model.onnx (or the graph built from its params when it has none) in an
  onnxruntime session: the GPU provider first when this onnxruntime has one, else the CPU's."""

  name = "onnx"

  def __init__(self, bundle: Any, *, providers: list[str] | None = None):
    import onnxruntime as ort

    from sw_zoo.inference import onnx_export
    from sw_zoo.inference.bundle import ONNX_FILE

    path = os.path.join(bundle.path, ONNX_FILE)
    model: str | bytes = path if os.path.isfile(path) else onnx_export.bundle_to_onnx_bytes(bundle)
    available = ort.get_available_providers()
    if providers is None:
      providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    self.session = ort.InferenceSession(model, providers=providers)
    self._wd_input = onnx_export.wd_input
    inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
    self.input_name = inputs[0].name
    size = inputs[0].shape[1]
    if isinstance(size, int) and size != bundle.image_size:
      raise ValueError(f"{path}: the graph takes {size} px images but the bundle's config.json says "
                       f"{bundle.image_size}; re-export it (sw-zoo export {bundle.path} --onnx)")
    names = [o.name for o in outputs]
    if onnx_export.OUTPUT_NAME not in names:
      raise ValueError(f"{path}: no output named {onnx_export.OUTPUT_NAME!r} (has {names})")
    # Graphs exported before the embedding output existed still tag; they cannot embed.
    self.has_embedding = onnx_export.EMBEDDING_NAME in names
    # A model with a box head has a `box` output [batch, 4] (x0, y0, x1, y1 in [0, 1] of the input).
    self.has_box = onnx_export.BOX_NAME in names
    self._outputs = ([onnx_export.OUTPUT_NAME] + ([onnx_export.EMBEDDING_NAME] if self.has_embedding else [])
                     + ([onnx_export.BOX_NAME] if self.has_box else []))
    self.embedding_dim = (outputs[names.index(onnx_export.EMBEDDING_NAME)].shape[1] if self.has_embedding
                          else None)
    self.providers = self.session.get_providers()
    # An export converted with --precision says so in its metadata: shown beside the backend, so a
    # user tagging with an int8 model.onnx knows (its scores differ from float32 by up to ~1e-2).
    meta = self.session.get_modelmeta().custom_metadata_map.get("sw_zoo.precision")
    try:
      self.precision = json.loads(meta)["precision"] if meta else "fp32"
    except (ValueError, KeyError, TypeError):
      self.precision = "unknown"
    # One thread: session.run is itself multi-threaded; this only lets decoding go on meanwhile.
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sw_zoo-onnx")

  def _run(self, images: np.ndarray, flip: bool):
    def once(x):
      probs, *rest = self.session.run(self._outputs, {self.input_name: self._wd_input(x)})
      pooled = rest.pop(0) if self.has_embedding else np.zeros((len(x), 0), np.float32)
      return probs, pooled, rest.pop(0) if self.has_box else None
    probs, pooled, box = once(images)
    if flip:  # as JaxForward: the mirror's box flipped back, then averaged
      probs2, pooled2, box2 = once(images[:, :, ::-1, :])
      probs, pooled = 0.5 * (probs + probs2), 0.5 * (pooled + pooled2)
      if box is not None:
        box = 0.5 * (box + box_metrics.flip_box(box2))
    return (np.asarray(probs, np.float32), np.asarray(pooled, np.float32),
            None if box is None else np.asarray(box, np.float32))

  def launch(self, images: np.ndarray, *, batch_size: int, flip: bool = False):
    del batch_size  # the graph's batch is dynamic: no padding, no recompiles
    return self._pool.submit(self._run, images, flip)

  def close(self) -> None:
    self._pool.shutdown(wait=True)


def make_forward(bundle: Any, backend: str = "auto", *, dtype: Any = None, device: Any = None):
  """The forward pass of `bundle` on `backend` (see `choose`)."""
  kind = choose(backend, bundle.path)
  if kind == "onnx":
    if dtype not in (None, "float32"):
      raise ValueError(f"dtype {dtype!r}: the onnx backend runs the exported graph as it is (float32); "
                       "use --backend jax for another compute dtype")
    return OnnxForward(bundle)
  return JaxForward(bundle, dtype=dtype, device=device)
