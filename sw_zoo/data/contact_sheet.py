"""PNG contact sheets: thumbnails in a grid, each with a few wrapped lines of words under it.
Used by `inspect` (samples and their tags) and `find-missing-tags` (suspects and their flags)."""

from __future__ import annotations

import math
import os
import uuid

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

CELL = 224          # Thumbnail side.
TEXT_LINES = 7      # Lines of words under each thumbnail.
LINE_HEIGHT = 13


def _wrap(draw: ImageDraw.ImageDraw, words: list[str], font, width: int, max_lines: int) -> list[str]:
  lines, line = [], ""
  for word in words:
    candidate = f"{line} {word}".strip()
    if line and draw.textlength(candidate, font=font) > width:
      lines.append(line)
      line = word
      if len(lines) == max_lines:
        break
    else:
      line = candidate
  if len(lines) < max_lines and line:
    lines.append(line)
  return lines


def render(cells: list[tuple[np.ndarray, list[str]]], out_path: str, *, text_lines: int = TEXT_LINES) -> None:
  """`cells`: (uint8 RGB image, words) each. Written as PNG through a temp file, so an existing
  sheet is replaced whole or not at all."""
  columns = max(1, math.ceil(math.sqrt(len(cells))))
  rows = max(1, math.ceil(len(cells) / columns))
  cell_h = CELL + text_lines * LINE_HEIGHT + 6
  sheet = Image.new("RGB", (columns * CELL, rows * cell_h), "white")
  draw = ImageDraw.Draw(sheet)
  font = ImageFont.load_default()
  for n, (image, words) in enumerate(cells):
    x, y = (n % columns) * CELL, (n // columns) * cell_h
    thumb = ImageOps.contain(Image.fromarray(image), (CELL - 4, CELL - 4), Image.Resampling.LANCZOS)
    sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2))
    for k, line in enumerate(_wrap(draw, words, font, CELL - 6, text_lines)):
      draw.text((x + 3, y + CELL + 2 + k * LINE_HEIGHT), line, fill="black", font=font)
    draw.rectangle((x, y, x + CELL - 1, y + cell_h - 1), outline=(200, 200, 200))
  tmp = f"{out_path}.{uuid.uuid4().hex[:8]}.tmp"
  try:
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
