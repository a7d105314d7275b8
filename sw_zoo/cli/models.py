"""`sw-zoo models [NAME]`: the variant table, or one model's exact params and forward FLOPs.

    sw-zoo models                                  # the variant table
    sw-zoo models l2_silu_eca --image-size 384     # params, FLOPs and GMACs of one model
"""
from __future__ import annotations

import argparse
import json

from sw_zoo.models import model_info
from sw_zoo.models.layers import ACTIVATIONS, ATTENTIONS


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="sw-zoo models",
      description="List the model variants, or show one model's parameter count and forward FLOPs. "
                  "NAME is a variant optionally suffixed with _<act> and/or _<attn> (e.g. l2_silu_eca).")
  parser.add_argument("name", nargs="?", help="model name; omit to list the variants")
  parser.add_argument("--image-size", type=int, default=224, help="square input size in pixels (default 224)")
  parser.add_argument("--num-classes", type=int, default=1000, help="head width; 0: no head (default 1000)")
  parser.add_argument("--act", choices=sorted(ACTIVATIONS), help="override the activation")
  parser.add_argument("--attn", choices=[*sorted(ATTENTIONS), "none"], help="override the attention")
  parser.add_argument("--no-flops", action="store_true", help="skip the (compiling) FLOPs count")
  parser.add_argument("--json", action="store_true", help="print JSON instead of text")
  args = parser.parse_args(argv)

  if args.name is None:
    rows = model_info.variant_rows()
    print(json.dumps(rows) if args.json else
          model_info.format_table(rows) + "\n\nSuffix a name with _<act> (" + ", ".join(sorted(ACTIVATIONS)) +
          ") and/or _<attn> (" + ", ".join(sorted(ATTENTIONS)) + "), e.g. l2_silu_eca.")
    return 0
  info = model_info.model_info(args.name, image_size=args.image_size, num_classes=args.num_classes, act=args.act,
                               attn=args.attn, flops=not args.no_flops)
  if args.json:
    print(json.dumps(info))
    return 0
  print(f"model         {info['name']} (variant {info['variant']}, act={info['act']}, attn={info['attn']})")
  print(f"classes       {info['num_classes']}  (embedding width {info['num_features']})")
  print(f"params        {info['params']:,}  ({info['params'] / 1e6:.2f} M)")
  if "flops" in info:
    print(f"forward       {info['gflops']:.3f} GFLOPs / image at {info['image_size']} px "
          f"= {info['gmacs']:.3f} GMACs  (XLA cost analysis, float32, batch 1)")
  return 0
