"""sw_zoo: train multi-label image taggers (Danbooru / e621 style) with JAX/Flax, from one CPU to
a TPU pod, and use the taggers it trains."""
__version__ = "0.1.0"
