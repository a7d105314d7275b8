"""A training recipe sized to the data and the hardware: the settings `configs/own_data.py` leaves
open (None) are chosen here when the run starts, from the prepared dataset (images, tags, image
sizes, validation size) and the machine (CPU cores, or accelerator kind and count).

    choices = recipe.choose(DataFacts(...), Hardware(...), budget_minutes=15, pretrained=None)
    record = recipe.resolve(config, workdir)   # fills config's None fields in place and logs why
    recipe.save(workdir, record)               # <workdir>/recipe.json, with the run's config.json

Anything the user sets on the command line is not None and is kept as given. The choices are
written to `<workdir>/recipe.json`; a resumed run reads them back instead of choosing again, so a
resume on other hardware (or after the dataset grew) continues the same run; a resume naming
another data.dir or init.checkpoint is refused.

The rules, and the measurements behind them, are in BUILD_NOTES.md (Training > Recipe for your own
data). In short: on a CPU the small `cpu_s` NFNet at the images' own resolution (at most 128 px),
on accelerators NFNet-L0/L1/L2 by dataset size at up to 320 px; AdamW with a learning rate scaled
by the square root of the batch; epochs that give small datasets enough steps; per-tag thresholds
when the validation split has the positives to choose them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from typing import Any

from sw_zoo import storage
from sw_zoo.data import dataset_info
from sw_zoo.train.config_check import ConfigError, get_key

RECIPE_FILE = "recipe.json"
# The config keys a recipe may choose (dotted, in the order they are reported) and their types: a
# config leaves one open as `ml_collections.config_dict.placeholder(type)`, so that
# --config.KEY=VALUE still parses as that type.
KEYS: dict[str, type] = {
    "model.name": str, "model.act": str, "model.attn": str, "model.dtype": str, "model.drop_path_rate": float,
    "data.image_size": int, "data.num_threads": int, "batch_size": int, "total_epochs": float,
    "optim.lr": float, "optim.warmup_epochs": float, "optim.ema_decay": float, "loss.name": str,
    "data.augment_spec.ops": str, "eval.count": int, "eval.per_tag_min_count": int, "init.freeze": str,
    "init.unfreeze_at": float,
}
# timm's transfer freeze: the stem and the first two stages.
PRETRAINED_FREEZE = r"^(stem|stages_[01]_\d+)/"
SIZE_SAMPLE = 64  # training images whose sizes are read to pick the resolution


@dataclasses.dataclass(frozen=True)
class DataFacts:
  num_train: int
  num_val: int
  num_tags: int
  median_side: int  # median shorter side of a sample of the stored training images


@dataclasses.dataclass(frozen=True)
class Hardware:
  platform: str  # cpu | gpu | tpu
  device_kind: str
  num_devices: int
  cpu_cores: int
  memory_gb: float = 0.0  # per accelerator (0: unknown, or a CPU)

  def describe(self) -> str:
    if self.platform == "cpu":
      return f"{self.cpu_cores} CPU core(s)"
    return f"{self.num_devices} x {self.device_kind}" + (f" ({self.memory_gb:g} GB)" if self.memory_gb else "")


def detect_hardware() -> Hardware:
  import jax

  device = jax.local_devices()[0]  # only a process's own devices report their memory
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  memory = 0.0
  if device.platform != "cpu":
    try:
      memory = (device.memory_stats() or {}).get("bytes_limit", 0) / 2**30
    except Exception:  # not every backend reports memory; the recipe then assumes 16 GB
      memory = 0.0
  return Hardware(device.platform, str(getattr(device, "device_kind", device.platform)), jax.device_count(), cores,
                  round(memory, 1))


def read_facts(data_dir: str) -> DataFacts:
  """Counts from dataset.json; the image size from the headers of a few stored training images
  (folder datasets keep the images' own sizes, so dataset.json has none to give)."""
  import io

  from array_record.python import array_record_module
  from PIL import Image

  from sw_zoo.data.records import decode_record

  info = dataset_info.read_dataset_info(data_dir)
  shown = storage.join(data_dir, dataset_info.DATASET_INFO_FILENAME)
  splits = info["splits"]
  num_train = int(splits.get("train", {}).get("num_examples", 0))
  num_val = int(splits.get("validation", {}).get("num_examples", 0))
  if not num_train:
    raise ValueError(f"{shown}: the train split is empty; nothing to train on")
  if not num_val:
    raise ValueError(f"{shown}: no validation images, which the run needs for its evaluations and thresholds; "
                     "prepare the dataset again with a --val-permille above 0")
  sides = []
  # Records spread over the first shard: the only one a gs:// dataset has to stage for this.
  shard = dataset_info.split_paths(data_dir, "train", info, shards=[0])[0]
  reader = array_record_module.ArrayRecordReader(shard)
  try:
    count = reader.num_records()
    picks = sorted({i * count // SIZE_SAMPLE for i in range(SIZE_SAMPLE)}) if count else []
    for index, raw in zip(picks, reader.read(picks)):
      try:
        with Image.open(io.BytesIO(decode_record(raw)["image"])) as image:
          sides.append(min(image.size))  # the header only: PIL decodes lazily
      except (OSError, ValueError) as e:
        raise ValueError(f"{shard}: record {index}: cannot read its image ({e})") from None
  finally:
    reader.close()
  return DataFacts(num_train=num_train, num_val=num_val, num_tags=int(info["num_labels"]),
                   median_side=int(statistics.median(sides)) if sides else 0)


def _round_to(value: float, step: int) -> int:
  return max(step, int(round(value / step)) * step)


def choose(data: DataFacts, hw: Hardware, *, budget_minutes: float = 0.0,
           pretrained: tuple[str, str | None, str | None] | None = None,
           given: dict[str, Any] | None = None) -> dict[str, tuple[Any, str]]:
  """{config key: (value, why)} for every key in KEYS. `pretrained`: the (name, act, attn) of the
  network the run starts from, which fixes the model. `given`: keys the user set; the choices
  that depend on them (LR on the batch, drop path on the model, ...) use the user's values."""
  given = given or {}
  out: dict[str, tuple[Any, str]] = {}
  cpu = hw.platform == "cpu"
  n = data.num_train

  # Model. On a CPU only a small network trains enough steps in minutes to learn shapes;
  # accelerators take NFNet-L by dataset size (SW-CV-ModelZoo's l0..l2 on Danbooru).
  if pretrained is not None:
    name, act, attn = pretrained
    out["model.name"] = (name, "the network the pretrained weights are for")
    out["model.act"] = (act, "from the pretrained network")
    out["model.attn"] = (attn or "none", "from the pretrained network")
  else:
    if cpu:
      name, why = "cpu_s", "CPU: the small NFNet that trains enough steps in minutes"
    elif n < 50_000:
      name, why = "l0", f"{hw.describe()}, {n} images (below 50k)"
    elif n < 1_000_000:
      name, why = "l1", f"{hw.describe()}, {n} images (50k to 1M)"
    else:
      name, why = "l2", f"{hw.describe()}, {n} images (1M or more)"
    out["model.name"] = (name, why)
    out["model.act"] = ("silu", "SW-CV-ModelZoo's best activation")
    out["model.attn"] = ("eca", "ECA: a cheap gain in their size x activation study")
  model = given.get("model.name") or out["model.name"][0]
  out["model.dtype"] = ("float32", "XLA:CPU has no fast bfloat16 convolutions") if cpu else \
      ("bfloat16", "bfloat16 compute, float32 params")
  big = model not in ("cpu_s", "tiny", "nano", "test_nfnet")
  out["model.drop_path_rate"] = ((0.2 if n < 50_000 else 0.1) if big else 0.0,
                                 f"stochastic depth for {model}, more on small data" if big
                                 else f"none: {model} underfits before it overfits")

  # Resolution: the images' own size rounded to a multiple of 32 (no upsampling for its own
  # sake), within 64 .. 128 px on a CPU and 64 .. 320 px elsewhere.
  cap = 128 if cpu else 320
  if data.median_side:
    size = max(64, min(cap, _round_to(data.median_side, 32)))
    why = f"images' median shorter side {data.median_side} px, rounded to 32, within 64..{cap} px"
  else:
    size, why = cap, f"image size unknown: {cap} px"
  out["data.image_size"] = (size, why + f" on {'a CPU' if cpu else 'accelerators'}")

  out["data.num_threads"] = (max(1, min(16, hw.cpu_cores)), f"one image reader per CPU core ({hw.cpu_cores}), "
                             "at most 16")

  # Batch: on a CPU, measured (below); on accelerators, a per-device batch the model fits at
  # 320 px; either way small enough that an epoch is >= 10 steps.
  if cpu:
    # Measured on 1890 emoji images at 96 px, 3 minutes (BUILD_NOTES): batch 32 beat 64 by
    # +0.025 macro-F1 / +0.046 micro-F1 at the same images per second; larger sets keep 64.
    batch = 32 if n < 10_000 else 64
    why = "on a CPU: 32 below 10k images (more updates at the same images/s), else 64"
  else:
    # Images per device at 320 px in bfloat16: about 4 per GB of memory for L0, 2 for L1, 1 for
    # L2 and F-models (activations dominate), as a power of two up to 256; 16 GB when unknown.
    per_gb = {"l0": 4.0, "l1": 2.0}.get(model, 1.0)
    per_device = min(256, 2 ** int(math.log2(max(per_gb * (hw.memory_gb or 16.0), 1))))
    batch = per_device * hw.num_devices
    why = f"{per_device} per device for {model} ({hw.memory_gb or 'assumed 16'} GB each)"
  capped = max(min(batch, 2 ** int(math.log2(max(n // 10, 8)))), min(8, batch))
  if capped < batch:
    batch, why = capped, f"at most n / 10 ({n // 10}), so an epoch is at least 10 steps"
  batch = max(hw.num_devices, batch // hw.num_devices * hw.num_devices)  # the data axis splits it
  out["batch_size"] = (batch, why)
  batch = given.get("batch_size") or batch

  # Length: small sets need many passes; a time budget replaces this anyway.
  epochs = float(min(150, max(15, round(300_000 / max(n, 1)))))
  out["total_epochs"] = (epochs, "budget_minutes decides the length" if budget_minutes > 0
                         else f"about 300k images seen, 15..150 epochs, for {n} images")

  # AdamW, LR by the square root of the batch from 2e-3 at 64 (the demo's, tuned on CPU); a third
  # of it from pretrained weights, which a large LR would wash out.
  lr = min(4e-3, 2e-3 * math.sqrt(batch / 64))
  if pretrained is not None:
    lr /= 3
  out["optim.lr"] = (float(f"{lr:.3g}"), f"AdamW, 2e-3 x sqrt(batch {batch} / 64), at most 4e-3"
                     + (", / 3 from pretrained" if pretrained else ""))
  steps_per_epoch = max(1, n // batch)
  warmup = max(1.0, min(5.0, 0.03 * epochs), 50 / steps_per_epoch if steps_per_epoch < 50 else 0.0)
  out["optim.warmup_epochs"] = (round(warmup, 2), "3% of the run within 1..5 epochs, and at least 50 steps "
                                "(a time budget caps it at a tenth of the planned run)")
  out["optim.ema_decay"] = (0.0, "none: runs this short end before an EMA catches up")

  out["loss.name"] = ("asl", "asymmetric loss (Ridnik et al.): measured +0.04 macro-F1 over BCE on a small "
                       "real-image set (BUILD_NOTES)")
  out["data.augment_spec.ops"] = ("shift,flip", "translations and flips keep every tag true (no crops: a "
                                  "crop can cut away the object a tag names)")
  out["eval.count"] = (10, "ten evaluations over the run (each costs a pass over the validation split)")

  # Per-tag thresholds where the validation split has the positives to choose one.
  per_val_tag = data.num_val / max(data.num_tags, 1)
  min_count = 10
  out["eval.per_tag_min_count"] = (min_count, f"a per-tag threshold for tags with >= {min_count} validation "
                                   f"positives ({data.num_val} validation images, {data.num_tags} tags: "
                                   f"{per_val_tag:.0f} per tag)")
  if pretrained is not None:
    out["init.freeze"] = (PRETRAINED_FREEZE, "the stem and first two stages hold the pretrained low-level features")
  else:
    out["init.freeze"] = ("", "from scratch: nothing frozen")
  freeze = given.get("init.freeze", out["init.freeze"][0])
  if pretrained is not None and freeze:
    out["init.unfreeze_at"] = (0.25, "frozen for the first quarter of the run, then all layers train")
  else:
    out["init.unfreeze_at"] = (0.0, "nothing frozen" if not freeze else "frozen throughout (no pretrained start)")
  return out


def _set(config: Any, key: str, value: Any) -> None:
  *parents, last = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[last] = value


def leave_open(config: Any) -> None:
  """Marks every recipe key of `config` as left to the recipe (a typed None)."""
  from ml_collections import config_dict

  for key, kind in KEYS.items():
    _set(config, key, config_dict.placeholder(kind))


def open_keys(config: Any) -> list[str]:
  """The recipe keys the config leaves to the recipe (None); a config without one of the keys
  does not leave it open (validation names what is missing)."""
  def is_open(key: str) -> bool:
    try:
      return get_key(config, key) is None
    except ConfigError:
      return False
  return [k for k in KEYS if is_open(k)]


def _given_model(config: Any) -> tuple[str, str | None, str | None] | None:
  """(name, act, attn) when the config sets all three itself."""
  model = (config.model.name, config.model.act, config.model.attn)
  return model if all(v is not None for v in model) else None


def _from_process_0(record: dict[str, Any]) -> dict[str, Any]:
  """Process 0's record on every process: a decision taken from a per-host view (which host saw
  recipe.json, whose device reported memory) must still be one decision."""
  import jax

  if jax.process_count() == 1:
    return record
  import numpy as np
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(record).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buffer = data if jax.process_index() == 0 else np.zeros(size, np.uint8)
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8)).decode())


def resolve(config: Any, workdir: str, *, log=print) -> dict[str, Any]:
  """Fills the config's None recipe keys in place (nothing to do for a config without any) and
  returns the record `save` keeps: what was chosen and from what. Writes nothing (the trainer
  saves it with the run's config, once every check has passed). Process 0 decides, and every
  process takes its record; only process 0 logs."""
  import jax

  keys = open_keys(config)
  if not keys:
    return {}
  if not config.data.dir:
    raise ValueError("config.data.dir is empty: name the dataset `sw-zoo prepare` wrote, "
                     "e.g. --config.data.dir=data/mine")
  inputs = {"data.dir": config.data.dir, "init.checkpoint": config.init.checkpoint}
  path = storage.join(workdir, RECIPE_FILE)
  if storage.exists(path):  # a resumed run continues with what it chose
    try:
      record = json.loads(storage.read_text(path))
      saved = record["choices"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}: not a recipe record ({e}); move it away or use a new workdir") from None
    changed = [k for k, v in inputs.items() if record.get("inputs", inputs).get(k) != v]
    if changed:
      raise ValueError(f"{path}: this run was planned for " + ", ".join(
          f"{k}={record['inputs'][k]!r}" for k in changed) + "; resume with the same, or use a new workdir")
    missing = [k for k in keys if k not in saved]
    if missing:
      raise ValueError(f"{path}: {', '.join(missing)} left to the recipe, but this run's saved recipe has no "
                       "value for them; set them with --config.KEY=... or use a new workdir")
    record = dict(record, resumed=True)
  else:
    record = _choose_for(config, keys, inputs)
  record = _from_process_0(record)
  for key in keys:
    _set(config, key, record["choices"][key])
  if jax.process_index() == 0:
    log(f"Recipe: resuming with the choices in {path}" if record.pop("resumed", False) else record.pop("report"))
  record.pop("report", None)
  return record


def _choose_for(config: Any, keys: list[str], inputs: dict[str, Any]) -> dict[str, Any]:
  from sw_zoo import run_dir

  data = read_facts(run_dir.absolute(config.data.dir))
  hw = detect_hardware()
  pretrained = None
  if config.init.checkpoint:
    # A model spelled out on the command line is the one the weights must fit (the warm start
    # checks); otherwise it is read from the source.
    pretrained = _given_model(config)
    if pretrained is None:
      from sw_zoo.train.warm_start import source_model
      pretrained = source_model(config.init.checkpoint, use_ema=config.init.use_ema)
  given = {k: get_key(config, k) for k in KEYS if k not in keys}
  options = choose(data, hw, budget_minutes=float(config.get("budget_minutes") or 0.0), pretrained=pretrained,
                   given=given)
  chosen, lines = {}, []
  for key in keys:
    value, why = options[key]
    chosen[key] = value
    lines.append(f"  {key} = {value!r}: {why}")
  size = f"~{data.median_side} px" if data.median_side else "image size unknown"
  report = (f"Recipe for {data.num_train} training images, {data.num_tags} tags, {size}, on {hw.describe()}"
            f"{' from ' + config.init.checkpoint if pretrained else ''} (set any of these with --config.KEY=...):\n"
            + "\n".join(lines))
  return {"inputs": inputs, "data": dataclasses.asdict(data), "hardware": dataclasses.asdict(hw),
          "given": given, "choices": chosen, "report": report}


def save(workdir: str, record: dict[str, Any]) -> None:
  if record:
    storage.write_text(storage.join(workdir, RECIPE_FILE), json.dumps(record, indent=2) + "\n")
