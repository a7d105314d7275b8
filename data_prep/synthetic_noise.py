"""Correlated, input-dependent label noise for the synthetic set: a careless annotator.

Real booru label noise is neither independent per tag nor the same for every image: an annotator
who overlooks a small object forgets every tag that object alone justifies, all at once, and
misjudges colours that have a close neighbour. `annotate(scene, rng, p)` simulates that (used by
data_prep.synthetic's `correlated_noise` option on TRAIN images only):

- Miss: each object is overlooked with probability `1 - (1 - p) ** (h / DIFFICULTY_SCALE)`,
  where the difficulty `h` is larger for small objects, objects whose colour is close to the
  background's, and objects on a busy (striped, checkered, dotted, noisy) background.
  `DIFFICULTY_SCALE` makes a fraction p of the default train set's objects missed at p = 0.3
  (0.054 at p = 0.05, 0.474 at p = 0.5); at p = 0.3, 43% of small, 21% of medium and 12% of
  large objects, up to ~0.9 for a small low-contrast object on a busy background. A missed
  object takes with it its shape (or character), colour, size and position tags unless another
  seen object has them too; the count tag
  becomes the count of seen objects (`3objects` -> `2objects`: a wrong tag, see below),
  `overlapping_objects` goes when either object of the overlapping pair is missed, and
  `outline` / `drop_shadow` go when no (non-character, for outline) object is seen any more.
- Confuse: each seen plain shape has its colour tag replaced by a confusable neighbour
  (`COLOR_NEIGHBOURS`: red <-> orange/pink, blue <-> cyan/purple, ...) with probability
  `1 - (1 - p / 3) ** (h / DIFFICULTY_SCALE)`.

Scene-level tags (background, border, sparkle, text, monochrome) and the rating are left alone.

The result's `tags` are the noisy tag names. True tags that are missing from them are what the
record stores in `dropped`. Tags it adds that are not true (a neighbour colour, a smaller count)
stand in `labels` as false positives; the record has no field for them (records.py), so an
image's clean labels are its tags regenerated with the noise off (dataset.json counts them).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from data_prep.synthetic_scene import Scene, object_contrast
from data_prep.synthetic_tags import (CHARACTER_TAGS, COLOR_TAGS, COUNT_TAGS,
                                      MONOCHROME_COLORS, POSITION_TAGS, SHAPES, SIZE_TAGS)

# Hue neighbours an annotator mixes up (symmetric except where a colour has one close partner).
COLOR_NEIGHBOURS = {
    "white": ("grey",), "black": ("grey",), "grey": ("white", "black"),
    "red": ("orange", "pink"), "orange": ("red", "yellow", "brown"), "yellow": ("orange",),
    "green": ("cyan",), "blue": ("purple", "cyan"), "purple": ("blue", "pink"),
    "pink": ("red", "purple"), "cyan": ("blue", "green"), "brown": ("orange", "black"),
}
BUSY_BACKGROUNDS = ("striped_background", "checkered_background", "polka_dot_background",
                    "noisy_background")
# Solves mean miss probability = 0.3 at p = 0.3 over the objects of 4000 default train images
# (seed 0, 128 px; their mean difficulty is 1.32). Recompute with `python -m
# data_prep.synthetic_noise` after changing `difficulty` or the scenes.
DIFFICULTY_SCALE = 1.2
CONFUSE_FRACTION = 1 / 3  # colour confusions happen at this fraction of the miss rate

# Every tag that exists because of the objects (the rest of a scene's tags do not).
OBJECT_TAGS = frozenset(SHAPES + CHARACTER_TAGS + COLOR_TAGS + SIZE_TAGS + COUNT_TAGS + POSITION_TAGS
                        + ("overlapping_objects", "outline", "drop_shadow"))


class Annotation(NamedTuple):
  tags: set[str]  # what the annotator tagged (no rating)
  missed: tuple[int, ...]  # indices into scene.placed
  confused: dict[int, str]  # index into scene.placed -> the colour tagged instead
  difficulty: tuple[float, ...]  # per object


def difficulty(scene: Scene, index: int) -> float:
  """How hard object `index` is to notice: 1 for a medium object (side 0.3) at contrast 160 on a
  plain background; x (0.3 / side)^2 for size, x 160 / contrast (in [0.5, 1.6]) and x 1.5 on a
  busy background."""
  p = scene.placed[index]
  size = (0.3 / p.obj.side) ** 2
  contrast = float(np.clip(160.0 / object_contrast(scene, p), 0.5, 1.6))
  clutter = 1.5 if scene.background in BUSY_BACKGROUNDS else 1.0
  return size * contrast * clutter


def seen_tags(scene: Scene, seen: list[int], colors: dict[int, str] | None = None) -> set[str]:
  """The tags an annotator gives `scene` who sees only objects `seen` (indices into
  scene.placed), reading object i's colour as `colors[i]` where given. All objects seen and no
  colours changed gives exactly scene.tags."""
  colors = colors or {}
  tags = set(scene.tags - OBJECT_TAGS)
  objects = [scene.placed[i].obj for i in seen]
  for i, obj in zip(seen, objects):
    tags |= {obj.kind, obj.size_tag, obj.zone}
    if not obj.is_character:
      tags.add(f"{colors.get(i, obj.color)}_object")
  if seen:
    tags.add(COUNT_TAGS[len(seen) - 1])
  if "overlapping_objects" in scene.tags and {0, 1} <= set(seen):
    tags.add("overlapping_objects")  # (the overlap is staged between the first two objects)
  if "outline" in scene.tags and any(not obj.is_character for obj in objects):
    tags.add("outline")
  if "drop_shadow" in scene.tags and seen:
    tags.add("drop_shadow")
  return tags


def annotate(scene: Scene, rng: np.random.Generator, p: float) -> Annotation:
  """The noisy tags of `scene` (module docstring). Draws 3 numbers per object from `rng`
  whatever the outcome, so the draws of one object do not shift those of the next."""
  n = len(scene.placed)
  h = np.array([difficulty(scene, i) for i in range(n)], np.float64)
  u_miss, u_confuse, u_pick = rng.random(n), rng.random(n), rng.random(n)
  exponent = h / DIFFICULTY_SCALE
  miss = u_miss < 1.0 - (1.0 - p) ** exponent
  confuse = u_confuse < 1.0 - (1.0 - CONFUSE_FRACTION * p) ** exponent
  seen = [i for i in range(n) if not miss[i]]
  colors = {}
  for i in seen:
    obj = scene.placed[i].obj
    if confuse[i] and not obj.is_character:
      options = [c for c in COLOR_NEIGHBOURS[obj.color]
                 if not scene.monochrome or c in MONOCHROME_COLORS]
      if options:
        colors[i] = options[int(u_pick[i] * len(options))]
  return Annotation(seen_tags(scene, seen, colors), tuple(np.flatnonzero(miss).tolist()), colors,
                    tuple(h.tolist()))


def _difficulty_scale(num_images: int = 4000, image_size: int = 128, seed: int = 0,
                      p: float = 0.3) -> float:
  """The DIFFICULTY_SCALE at which a fraction `p` of the objects is missed (bisection)."""
  from data_prep.synthetic_scene import render_scene

  h = []
  for i in range(num_images):
    scene = render_scene(np.random.default_rng([seed, 0, i]), image_size)
    h += [difficulty(scene, k) for k in range(len(scene.placed))]
  h = np.array(h)
  lo, hi = 0.1, 10.0  # the missed fraction falls as the scale grows
  for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if np.mean(1 - (1 - p) ** (h / mid)) > p else (lo, mid)
  return (lo + hi) / 2


if __name__ == "__main__":
  print(f"DIFFICULTY_SCALE = {_difficulty_scale():.3f}")
