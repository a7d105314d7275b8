"""Lower-precision copies of an exported ONNX tagger, and how far they stray from float32
(`sw-zoo export --onnx --precision fp16|int8`).

    small = onnx_precision.convert(f32_bytes, "int8")
    check = onnx_precision.split_check_set(data_dir, image_size=448, limit=256)  # or folder_check_set
    report = onnx_precision.compare(f32_bytes, small, "int8", check, thresholds=..., scored=...)

Both conversions are onnxruntime's own tools, so what we ship is what its users would make:
  * fp16: `onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`: weights
    and activations in float16, the input and output stay float32 because every WD tool feeds
    float32 arrays and reads float32 scores.
  * int8: `onnxruntime.quantization.quantize_dynamic`: 8-bit weights per output channel (the NF
    convs' channels differ in scale; per channel was slightly closer to fp32 at the same speed),
    activations quantised per batch at run time; convs become ConvInteger and the head
    MatMulInteger. The weights are *uint8*: onnxruntime 1.32's CPU provider runs ConvInteger with
    int8 weights too, but about 4.5x slower (a reference kernel instead of MLAS's u8 x u8 GEMM;
    benchmarks/onnx_precision.py and BUILD_NOTES.md), and no closer to fp32.
Both set producer_name back to "sw_zoo": the export's ownership check reads it.

`compare` runs both graphs in onnxruntime on the same images and reports the max / mean absolute
score difference, micro-F1 against the labels at the bundle's thresholds for each graph (when the
images come with labels), the agreement F1 of the converted graph's decisions against float32's,
and img/s of each on the same batch, timed alternately in one process.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any

import numpy as np

from sw_zoo.inference.onnx_export import wd_input

FP32, FP16, INT8 = "fp32", "fp16", "int8"
PRECISIONS = (FP32, FP16, INT8)
PRODUCER = "sw_zoo"
CHECK_LIMIT = 256  # "a few hundred" validation images: enough for a stable F1, seconds to run
SPEED_BATCH = 16
SPEED_SECONDS = 2.0  # per model, over all timed rounds


def convert(model_bytes: bytes, precision: str) -> bytes:
  """`model_bytes` (a float32 graph) converted to `precision` (see the module docstring)."""
  if precision not in PRECISIONS:
    raise ValueError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
  if precision == FP32:
    return model_bytes
  import onnx

  model = onnx.load_from_string(model_bytes)
  if precision == FP16:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=True)
  else:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic writes to a path; its pre-processing hint goes to the root logger.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    with tempfile.TemporaryDirectory(prefix="sw_zoo_int8.") as tmp:
      path = os.path.join(tmp, "model.onnx")
      quantize_dynamic(model, path, weight_type=QuantType.QUInt8, per_channel=True)
      converted = onnx.load(path)
  converted.producer_name = PRODUCER
  return converted.SerializeToString()


# ---- Images to check against -------------------------------------------------------------------


@dataclasses.dataclass
class CheckSet:
  """Preprocessed images (uint8 RGB [N, S, S, 3]), their labels in model row order (or None),
  and where they came from."""
  images: np.ndarray
  labels: np.ndarray | None
  described: str


def _spread(total: int, limit: int) -> np.ndarray:
  # Evenly spaced over the split: shards are often written in source order (by date, by site).
  return np.unique(np.linspace(0, total - 1, num=min(total, limit)).round().astype(np.int64))


def split_check_set(data_dir: str, *, image_size: int, limit: int = CHECK_LIMIT,
                    split: str = "validation") -> CheckSet:
  """Up to `limit` records of the dataset's `split`, decoded and preprocessed as evaluation does."""
  import grain

  from sw_zoo.data import dataset_info
  from sw_zoo.data.pipeline import decode_example

  info = dataset_info.read_dataset_info(data_dir)
  source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, split, info))
  picked = _spread(len(source), limit)
  examples = [decode_example(source[int(i)], num_labels=info["num_labels"], image_size=image_size) for i in picked]
  if not examples:
    raise ValueError(f"{data_dir}: split {split!r} is empty; nothing to check the converted model on")
  return CheckSet(np.stack([e["image"] for e in examples]), np.stack([e["labels"] for e in examples]),
                  f"{len(examples)} {split} images of {data_dir}")


def folder_check_set(folder: str, *, image_size: int, limit: int = CHECK_LIMIT) -> CheckSet:
  """Up to `limit` images under `folder` (no labels), preprocessed as `Tagger` does."""
  from sw_zoo.data import image_files, image_io
  from sw_zoo.data.preprocess import preprocess_eval

  paths = list(image_files.iter_images(folder))
  if not paths:
    raise ValueError(f"--check-images {folder}: no images there")
  picked = [paths[i] for i in _spread(len(paths), limit)]
  images = [preprocess_eval(np.asarray(image_io.load_image(p)), image_size) for p in picked]
  return CheckSet(np.stack(images), None, f"{len(images)} images under {folder}")


# ---- Running and comparing ---------------------------------------------------------------------


def session(model: bytes | str):
  import onnxruntime as ort

  return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def _scores(sess, images: np.ndarray, batch: int = 32) -> np.ndarray:
  name = sess.get_inputs()[0].name
  return np.concatenate([sess.run(None, {name: wd_input(images[i:i + batch])})[0]
                         for i in range(0, len(images), batch)])


def _micro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
  tp = float(np.sum(pred & truth))
  denominator = 2 * tp + float(np.sum(pred & ~truth)) + float(np.sum(~pred & truth))
  return 2 * tp / denominator if denominator else 1.0


def speed(sessions: dict[str, Any], batch: np.ndarray, seconds: float = SPEED_SECONDS,
          max_rounds: int = 50) -> dict[str, float]:
  """img/s per session on the same batch (uint8 RGB): one warm-up each, then rounds timed
  alternately (so all see the same machine load) until `seconds` per model; the median round
  counts."""
  x = wd_input(batch)
  times: dict[str, list[float]] = {k: [] for k in sessions}
  for sess in sessions.values():
    sess.run(None, {sess.get_inputs()[0].name: x})
  while min(sum(t) for t in times.values()) < seconds and len(next(iter(times.values()))) < max_rounds:
    for key, sess in sessions.items():
      start = time.perf_counter()
      sess.run(None, {sess.get_inputs()[0].name: x})
      times[key].append(time.perf_counter() - start)
  return {key: len(batch) / float(np.median(t)) for key, t in times.items()}


def compare(reference: bytes, converted: bytes, precision: str, check: CheckSet, *, thresholds: np.ndarray,
            scored: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
  """The agreement report of `converted` against `reference` (float32) on `check`'s images.

  `thresholds`: one per output row (the bundle's, by category); `scored`: rows that count in the
  F1s (placeholders and ratings excluded); `labels`: multi-hot in output row order (default:
  `check.labels`)."""
  labels = check.labels if labels is None else labels
  ref_sess, conv_sess = session(reference), session(converted)
  ref, got = _scores(ref_sess, check.images), _scores(conv_sess, check.images)
  diff = np.abs(got.astype(np.float64) - ref)[:, scored]
  ref_pred, got_pred = (ref >= thresholds)[:, scored], (got >= thresholds)[:, scored]
  report: dict[str, Any] = {
      "precision": precision,
      "checked_on": check.described,
      "max_abs_diff": float(diff.max()),
      "mean_abs_diff": float(diff.mean()),
      "agreement_f1": _micro_f1(got_pred, ref_pred),
  }
  if labels is not None:
    truth = labels[:, scored] > 0.5
    report["micro_f1"] = {FP32: _micro_f1(ref_pred, truth), precision: _micro_f1(got_pred, truth)}
  batch = check.images[:SPEED_BATCH]
  rates = speed({FP32: ref_sess, precision: conv_sess}, batch)
  report["speed"] = {"batch": len(batch), "images_per_s": rates,
                     "ratio_to_fp32": rates[precision] / rates[FP32],
                     "provider": "onnxruntime CPUExecutionProvider"}
  report["bytes"] = {FP32: len(reference), precision: len(converted)}
  return report


def summary(report: dict[str, Any]) -> str:
  """Printable lines of a `compare` report."""
  p = report["precision"]
  lines = [f"{p} vs fp32 on {report['checked_on']}:",
           f"  score difference: max {report['max_abs_diff']:.2e}, mean {report['mean_abs_diff']:.2e}",
           f"  agreement F1 of {p} decisions with fp32's: {report['agreement_f1']:.4f}"]
  if "micro_f1" in report:
    f1 = report["micro_f1"]
    lines.append(f"  micro-F1 against the labels: fp32 {f1[FP32]:.4f}, {p} {f1[p]:.4f}")
  s = report["speed"]
  lines.append(f"  speed (onnxruntime CPU, batch {s['batch']}): fp32 {s['images_per_s'][FP32]:.1f} img/s, "
               f"{p} {s['images_per_s'][p]:.1f} img/s ({s['ratio_to_fp32']:.2f}x fp32)")
  lines.append(f"  size: fp32 {report['bytes'][FP32] / 1e6:.1f} MB, {p} {report['bytes'][p] / 1e6:.1f} MB")
  return "\n".join(lines)


def with_metadata(model_bytes: bytes, entries: dict[str, str]) -> bytes:
  """`model_bytes` with more metadata_props (replacing entries of the same key)."""
  import onnx

  model = onnx.load_from_string(model_bytes)
  kept = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
  del model.metadata_props[:]
  for key, value in kept + list(entries.items()):
    entry = model.metadata_props.add()
    entry.key, entry.value = key, str(value)
  return model.SerializeToString()
