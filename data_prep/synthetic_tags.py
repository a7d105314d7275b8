"""The synthetic dataset's tag table: every tag group, what each tag means, and how often scenes
are drawn with it (the renderer is data_prep/synthetic_scene.py).

Within each group the order is the sampling rank: weights fall off like Zipf's law, which gives
the long tail of a real booru.
"""

from __future__ import annotations

import numpy as np

RATING_TAGS = ("general", "sensitive", "questionable", "explicit")

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond_(shape)",
          "hexagon", "arrow_(symbol)", "crescent", "semicircle")

# Saturated object colours, chosen to stay distinguishable after JPEG compression.
COLORS = {
    "white": (248, 248, 248), "black": (18, 18, 18), "red": (220, 30, 30),
    "blue": (30, 70, 225), "yellow": (250, 215, 20), "green": (30, 165, 50),
    "grey": (128, 128, 128), "pink": (255, 120, 190), "purple": (135, 45, 185),
    "orange": (255, 135, 0), "brown": (125, 75, 30), "cyan": (0, 205, 225),
}
COLOR_TAGS = tuple(f"{c}_object" for c in COLORS)
MONOCHROME_COLORS = ("white", "black", "grey")

# Object size = longest side of the object's box as a fraction of the image side; the gaps
# between classes keep the tags unambiguous.
SIZE_RANGES = {"small_object": (0.16, 0.23), "medium_object": (0.27, 0.34),
               "large_object": (0.38, 0.47)}
SIZE_TAGS = tuple(SIZE_RANGES)
# P(size class | number of objects): crowded images get smaller objects.
SIZE_WEIGHTS = {1: (0.2, 0.35, 0.45), 2: (0.3, 0.4, 0.3), 3: (0.45, 0.4, 0.15),
                4: (0.55, 0.35, 0.1), 5: (0.7, 0.27, 0.03), 6: (0.8, 0.2, 0.0)}

MAX_OBJECTS = 6
COUNT_TAGS = tuple("1object" if n == 1 else f"{n}objects" for n in range(1, MAX_OBJECTS + 1))
COUNT_WEIGHTS = (0.38, 0.26, 0.16, 0.10, 0.06, 0.04)

BACKGROUND_KINDS = ("white_background", "gradient_background", "grey_background",
                    "colored_background", "striped_background", "black_background",
                    "polka_dot_background", "checkered_background", "noisy_background")
PLAIN_BACKGROUNDS = ("white_background", "grey_background", "colored_background",
                     "black_background")
BACKGROUND_TAGS = BACKGROUND_KINDS + ("simple_background",)  # simple = any plain colour.

# Vertical zones of object centres (fractions of the side). Centres never fall in the gaps, so a
# small translation cannot move an object across a boundary; left/right is not tagged because
# training flips images horizontally.
POSITION_TAGS = ("upper_object", "lower_object", "centered_object")
UPPER_MAX_Y, LOWER_MIN_Y, CENTER_HALF_WIDTH = 0.40, 0.60, 0.06
ZONE_WEIGHTS = (0.42, 0.42, 0.16)

MISC_TAGS = ("outline", "overlapping_objects", "border", "drop_shadow", "monochrome",
             "greyscale", "sparkle", "signature", "watermark")
MISC_PROBABILITIES = {"outline": 0.16, "overlapping_objects": 0.14, "border": 0.10,
                      "drop_shadow": 0.08, "monochrome": 0.06, "sparkle": 0.045,
                      "signature": 0.05, "watermark": 0.03}

CHARACTER_TAGS = ("smiley_face", "house", "tree", "flower", "snowman", "traffic_light")
CHARACTER_PROBABILITY = 0.10

GENERAL_TAGS = (SHAPES + COLOR_TAGS + SIZE_TAGS + COUNT_TAGS + POSITION_TAGS + BACKGROUND_TAGS
                + MISC_TAGS)


def _zipf(n: int, exponent: float = 1.0) -> np.ndarray:
  weights = 1.0 / np.arange(1, n + 1) ** exponent
  return weights / weights.sum()


# Sampling probabilities of the groups' members, in table order.
SHAPE_P = _zipf(len(SHAPES), 1.4)
COLOR_P = _zipf(len(COLORS), 1.3)
BACKGROUND_P = _zipf(len(BACKGROUND_KINDS), 0.9)
CHARACTER_P = _zipf(len(CHARACTER_TAGS), 1.0)
