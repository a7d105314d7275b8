"""sw_zoo: train multi-label image taggers (Danbooru / e621 style) with JAX/Flax, from one CPU to
a TPU pod, and use the taggers it trains.

    tagger = sw_zoo.load_pretrained("runs/demo/bundle")   # a bundle directory or a registered name
    tagger.predict("post.jpg").general
"""
__version__ = "0.1.0"

__all__ = ["Tagger", "load_pretrained"]

# Resolved on first use: `import sw_zoo` (and so `sw-zoo --help`) stays free of jax.
_LAZY = {"load_pretrained": "sw_zoo.inference.pretrained", "Tagger": "sw_zoo.inference.tagger"}


def __getattr__(name):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'sw_zoo' has no attribute {name!r}")
