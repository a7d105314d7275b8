"""Importing timm beside a CPU-only torch (parity tests and benchmarks only).

timm imports torchvision, whose PyPI wheel ships compiled ops built for a different torch than
the local CPU wheel; its C extension then fails to load and ``import torchvision`` dies when it
registers a fake (meta) kernel for ``torchvision::nms``, an op whose schema was never defined.
timm never calls nms/qnms, so defining the two schemas (no kernels) before the import is enough.
Where torchvision's extension does load (a torchvision built for this torch), nothing is defined.

Nothing in the library imports this module; ``sw_zoo.models.convert_timm`` needs neither torch
nor timm when it is given a safetensors file.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

# torchvision's own schemas (torchvision/csrc/ops/nms.cpp, qnms.cpp).
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # kept alive: a torch.library.Library's definitions vanish with the object


def _torchvision_extension_loads(torch) -> bool:
  """Whether torchvision's compiled ops load into this torch (as ``torchvision.extension`` checks,
  without importing the torchvision package, whose import is what fails otherwise)."""
  spec = importlib.util.find_spec("torchvision")
  if spec is None or spec.origin is None:
    return False
  folder = os.path.dirname(spec.origin)
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = os.path.join(folder, "_C" + suffix)
    if os.path.exists(path):
      try:
        torch.ops.load_library(path)  # torchvision's own later load of it is then a no-op
        return True
      except (ImportError, OSError):
        return False
  return False


def _register_torchvision_schemas() -> None:
  global _LIBRARY
  import torch

  if _LIBRARY is not None or "torchvision" in sys.modules or _torchvision_extension_loads(torch):
    return
  # "FRAGMENT": add to the namespace without claiming it.
  lib = torch.library.Library("torchvision", "FRAGMENT")
  for schema in _SCHEMAS.values():
    lib.define(schema)
  _LIBRARY = lib


def import_timm() -> ModuleType:
  """``import timm``, after making sure torchvision's nms/qnms ops exist. Returns the module."""
  _register_torchvision_schemas()
  return importlib.import_module("timm")
