"""Emulations of the WD-tagger tools `sw-zoo export --layout` writes for: how each one finds a
model, prepares an image and names the scores, written from the tools' documented behaviour
(not copied from them), so tests can run "the tool" on an export without the tool.

    kohya_tag(model_dir, repo_id, paths, batch_size=4, general_threshold=.35, character_threshold=.35)
    webui_models(models_path) / webui_tag(models_path, name, path, threshold)
    comfyui_models(models_dir) / comfyui_tag(models_dir, name, path, threshold, character_threshold)
    space_tag(bundle_dir, path, general_threshold, character_threshold)

Every *_tag returns, per image, a `ToolResult`: the rating the tool reports (None when it
reports none), the ratings' scores where it shows them, and (name, score) lists of the general
and character tags in the tool's own order. The real tools print names only; the scores are kept
so tests can compare them with sw_zoo's own Tagger.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from PIL import Image


@dataclasses.dataclass
class ToolResult:
  rating: str | None
  ratings: dict[str, float]
  general: list[tuple[str, float]]
  character: list[tuple[str, float]]


def _session(path: str) -> ort.InferenceSession:
  return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


# ---- kohya sd-scripts finetune/tag_images_by_wd14_tagger.py --onnx -------------------------------

KOHYA_IMAGE_SIZE = 448  # hard-coded in the script


def kohya_preprocess(path: str) -> np.ndarray:
  """PIL -> RGB (alpha dropped, not composited) -> BGR, centred on a 255 square, resized to 448,
  float32. Shrinking: the script passes cv2.INTER_AREA positionally, where cv2.resize takes `dst`,
  so OpenCV's default bilinear runs; growing: its PIL helper (Lanczos)."""
  image = np.array(Image.open(path).convert("RGB"))[:, :, ::-1]
  h, w = image.shape[:2]
  size = max(h, w)
  pad_x, pad_y = size - w, size - h
  left, top = pad_x // 2, pad_y // 2
  image = np.pad(image, ((top, pad_y - top), (left, pad_x - left), (0, 0)), mode="constant", constant_values=255)
  if size > KOHYA_IMAGE_SIZE:
    image = cv2.resize(image, (KOHYA_IMAGE_SIZE, KOHYA_IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
  elif size < KOHYA_IMAGE_SIZE:
    rgb = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
    image = np.asarray(rgb.resize((KOHYA_IMAGE_SIZE, KOHYA_IMAGE_SIZE), Image.LANCZOS))[:, :, ::-1]
  return image.astype(np.float32)


def kohya_tag(model_dir: str, repo_id: str, image_paths: list[str], batch_size: int = 4,
              general_threshold: float = 0.35, character_threshold: float = 0.35) -> list[ToolResult]:
  folder = os.path.join(model_dir, repo_id.replace("/", "_"))
  onnx_path = os.path.join(folder, "model.onnx")
  model = onnx.load(onnx_path)
  graph_input = model.graph.input[0]
  input_name = graph_input.name
  batch_dim = graph_input.type.tensor_type.shape.dim[0]
  fixed_batch = batch_dim.dim_value if batch_dim.HasField("dim_value") and batch_dim.dim_value > 0 else None
  del model
  session = _session(onnx_path)
  with open(os.path.join(folder, "selected_tags.csv"), encoding="utf-8") as f:
    rows = list(csv.reader(f))
  header, rows = rows[0], rows[1:]
  assert header[:3] == ["tag_id", "name", "category"], f"unexpected csv header {header}"
  rating_tags = [r[1] for r in rows if r[2] == "9"]
  general_tags = [r[1] for r in rows if r[2] == "0"]
  character_tags = [r[1] for r in rows if r[2] == "4"]

  results = []
  for start in range(0, len(image_paths), batch_size):
    batch = np.stack([kohya_preprocess(p) for p in image_paths[start:start + batch_size]])
    n = len(batch)
    if fixed_batch and n < fixed_batch:  # a static batch dim: pad with copies, as the script does
      batch = np.concatenate([batch, np.repeat(batch[-1:], fixed_batch - n, axis=0)])
    probs = session.run(None, {input_name: batch})[0][:n]
    for prob in probs:
      rating = rating_tags[int(prob[:4].argmax())]
      general, character = [], []
      for i, p in enumerate(prob[4:]):
        if i < len(general_tags) and p >= general_threshold:
          general.append((general_tags[i], float(p)))
        elif i >= len(general_tags) and p >= character_threshold:
          character.append((character_tags[i - len(general_tags)], float(p)))
      results.append(ToolResult(rating, dict(zip(rating_tags, map(float, prob[:4]))), general, character))
  return results


# ---- stable-diffusion-webui-wd14-tagger ---------------------------------------------------------


# The extension's built-in interrogators (picobyte's fork): a TaggerOnnx folder with one of these
# names is listed, but the model is still downloaded from the Hub (its local files are ignored).
WEBUI_BUILTIN = ("wd14-vit.v1", "wd14-vit.v2", "wd14-convnext.v1", "wd14-convnext.v2", "wd14-convnextv2.v1",
                 "wd14-swinv2-v1", "wd-v1-4-moat-tagger.v2", "mld-caformer.dec-5-97527", "mld-tresnetd.6-30000",
                 "Z3D-E621-Convnext")
# The one folder name its refresh turns into a local (not downloaded) model.
WEBUI_LOCAL = "wd-v1-4-convnextv2-tagger-v2"


def webui_models(models_path: str) -> dict[str, tuple[str, str]]:
  """The extension's model-list refresh over models/TaggerOnnx: {name: (onnx, csv)} of the local
  models it would load. A folder needs exactly one .onnx and at least one .csv (those with 'tag'
  or 'select' in the name first); a qualifying folder whose name is neither built in nor the local
  name raises NotImplementedError, as the extension does (and then lists no model at all)."""
  found = {}
  for folder in sorted(glob.glob(os.path.join(models_path, "*"))):
    if not os.path.isdir(folder):
      continue
    onnx_files, csv_files = glob.glob(os.path.join(folder, "*.onnx")), glob.glob(os.path.join(folder, "*.csv"))
    if len(onnx_files) != 1 or not csv_files:
      continue
    csv_files.sort(key=lambda p: -1 if any(t in os.path.basename(p).lower() for t in ("tag", "select")) else 1)
    name = os.path.basename(folder)
    if name == WEBUI_LOCAL:
      found[name] = (onnx_files[0], csv_files[0])
    elif name not in WEBUI_BUILTIN:
      raise NotImplementedError(f"Add {name} resolution similar to above here")
  return found


def webui_preprocess(path: str, height: int) -> np.ndarray:
  """RGBA composited on white, RGB -> BGR, centred on a white square of side max(h, w, height),
  resized to height (INTER_AREA shrinking, INTER_CUBIC growing), float32."""
  image = Image.open(path)
  if image.mode == "RGBA":
    canvas = Image.new("RGBA", image.size, "WHITE")
    canvas.paste(image, mask=image)
    image = canvas
  image = np.asarray(image.convert("RGB"))[:, :, ::-1]
  h, w = image.shape[:2]
  side = max(h, w, height)  # make_square never shrinks: small images are padded up to the size
  dh, dw = side - h, side - w
  image = cv2.copyMakeBorder(image, dh // 2, dh - dh // 2, dw // 2, dw - dw // 2, cv2.BORDER_CONSTANT,
                             value=[255, 255, 255])
  if image.shape[0] > height:
    image = cv2.resize(image, (height, height), interpolation=cv2.INTER_AREA)
  elif image.shape[0] < height:
    image = cv2.resize(image, (height, height), interpolation=cv2.INTER_CUBIC)
  return image.astype(np.float32)


def webui_tag(models_path: str, name: str, path: str, threshold: float = 0.35) -> ToolResult:
  onnx_path, csv_path = webui_models(models_path)[name]
  session = _session(onnx_path)
  height = session.get_inputs()[0].shape[1]
  image = webui_preprocess(path, height)[None]
  scores = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: image})[0][0]
  tags = pd.read_csv(csv_path)[["name"]].copy()
  tags["confidents"] = scores
  ratings = dict(tags[:4].values)
  rest = dict(tags[4:].values)
  general = sorted(((k, float(v)) for k, v in rest.items() if v >= threshold), key=lambda kv: -kv[1])
  return ToolResult(max(ratings, key=ratings.get), {k: float(v) for k, v in ratings.items()}, general, [])


# ---- ComfyUI-WD14-Tagger ------------------------------------------------------------------------


def comfyui_models(models_dir: str) -> list[str]:
  """Model names: every <name>.onnx in the flat folder."""
  return sorted(os.path.splitext(f)[0] for f in os.listdir(models_dir) if f.endswith(".onnx"))


def comfyui_preprocess(path: str, height: int) -> np.ndarray:
  """Longer side scaled to height (LANCZOS), pasted centred on a white RGB square, float32, BGR."""
  image = Image.open(path).convert("RGB")  # ComfyUI hands the node RGB pixels, alpha separate
  ratio = float(height) / max(image.size)
  new_size = tuple(int(x * ratio) for x in image.size)
  image = image.resize(new_size, Image.LANCZOS)
  square = Image.new("RGB", (height, height), (255, 255, 255))
  square.paste(image, ((height - new_size[0]) // 2, (height - new_size[1]) // 2))
  return np.array(square).astype(np.float32)[:, :, ::-1]


def comfyui_tag(models_dir: str, name: str, path: str, threshold: float = 0.35,
                character_threshold: float = 0.85) -> ToolResult:
  session = _session(os.path.join(models_dir, name + ".onnx"))
  graph_input = session.get_inputs()[0]
  height = graph_input.shape[1]
  image = np.ascontiguousarray(comfyui_preprocess(path, height)[None])
  tags, general_index, character_index = [], None, None
  with open(os.path.join(models_dir, name + ".csv"), encoding="utf-8") as f:
    reader = csv.reader(f)
    next(reader)
    for row in reader:
      if general_index is None and row[2] == "0":
        general_index = reader.line_num - 2
      elif character_index is None and row[2] == "4":
        character_index = reader.line_num - 2
      tags.append(row[1])
  probs = session.run([session.get_outputs()[0].name], {graph_input.name: image})[0]
  result = list(zip(tags, probs[0]))
  general = [(n, float(p)) for n, p in result[general_index:character_index] if p > threshold]
  character = [(n, float(p)) for n, p in result[character_index:] if p > character_threshold]
  return ToolResult(None, {}, general, character)


# ---- SmilingWolf's wd-tagger Space (the bundle layout) ---------------------------------------------


def space_tag(bundle_dir: str, path: str, general_threshold: float = 0.35,
              character_threshold: float = 0.85) -> ToolResult:
  session = _session(os.path.join(bundle_dir, "model.onnx"))
  _, height, width, _ = session.get_inputs()[0].shape
  frame = pd.read_csv(os.path.join(bundle_dir, "selected_tags.csv"))
  names = list(frame["name"])
  rating_rows, general_rows, character_rows = (list(np.where(frame["category"] == c)[0]) for c in (9, 0, 4))
  image = Image.open(path)
  canvas = Image.new("RGBA", image.size, (255, 255, 255))
  canvas.alpha_composite(image.convert("RGBA"))
  image = canvas.convert("RGB")
  side = max(image.size)
  square = Image.new("RGB", (side, side), (255, 255, 255))
  square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
  if side != height:
    square = square.resize((width, height), Image.BICUBIC)
  batch = np.asarray(square, dtype=np.float32)[:, :, ::-1][None]
  scores = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: np.ascontiguousarray(batch)})[0][0]
  ratings = {names[i]: float(scores[i]) for i in rating_rows}
  general = sorted(((names[i], float(scores[i])) for i in general_rows if scores[i] > general_threshold),
                   key=lambda kv: -kv[1])
  character = sorted(((names[i], float(scores[i])) for i in character_rows if scores[i] > character_threshold),
                     key=lambda kv: -kv[1])
  return ToolResult(max(ratings, key=ratings.get) if ratings else None, ratings, general, character)
