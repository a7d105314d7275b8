"""A small real-image tagging dataset from what Debian installs: Noto Color Emoji + CLDR keywords.

  apt-get install fonts-noto-color-emoji unicode-cldr-core
  python benchmarks/emoji_folder.py --out /tmp/emoji            # -> /tmp/emoji/{train,test}/

The images are Google's emoji artwork (not drawn by sw_zoo); the tags are the CLDR English
keywords of each emoji ("hand", "face", "flag", "medium skin tone", ...), the most frequent
`--tags` of them. That gives a kohya-style folder of about 3,500 captioned images with ~20 tags
where, as in a user's own set, some tags are colours (skin tones) and most are shapes (hands,
faces, couples, flags).

The test folder is split off by *base emoji*: every skin-tone and gender variant of one emoji
lands on the same side, so the test images are unseen shapes, not recoloured training images.
Each folder holds `<name>.png` + `<name>.txt` (comma-separated tags, Danbooru-style underscores).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import sys
import xml.etree.ElementTree as ET

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR = "/usr/share/unicode/cldr/common"
# Noto's colour bitmaps exist at one size; PIL scales nothing, so draw at it and resize after.
BITMAP_SIZE = 109
# Skin-tone modifiers, gender signs and joiners: stripped to find the base emoji for the split.
VARIANT_CODEPOINTS = set(range(0x1F3FB, 0x1F400)) | {0x200D, 0xFE0F, 0x2640, 0x2642}


def read_keywords(cldr_dir: str) -> dict[str, list[str]]:
  """Emoji sequence -> its CLDR keywords (plain and derived annotations; tts names skipped)."""
  out: dict[str, list[str]] = {}
  for sub in ("annotations", "annotationsDerived"):
    path = os.path.join(cldr_dir, sub, "en.xml")
    for node in ET.parse(path).iter("annotation"):
      if node.get("type") == "tts" or not node.text:
        continue
      seq = node.get("cp")
      if any(ord(ch) >= 0x2300 for ch in seq):  # emoji, not punctuation/letters
        out[seq] = [k.strip() for k in node.text.split("|") if k.strip()]
  return out


def render(font: ImageFont.FreeTypeFont, seq: str, size: int) -> Image.Image | None:
  """The emoji on white, square, `size` px; None when the font has no single glyph for it."""
  # A sequence the font cannot shape comes out as several glyphs side by side.
  if font.getlength(seq) > BITMAP_SIZE * 1.4:
    return None
  canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
  ImageDraw.Draw(canvas).text((4, 4), seq, font=font, embedded_color=True)
  box = canvas.getbbox()
  if box is None:
    return None
  glyph = canvas.crop(box)
  side = max(glyph.size) + 8
  square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
  square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
  return square.convert("RGB").resize((size, size), Image.LANCZOS)


def base_of(seq: str) -> str:
  return "".join(ch for ch in seq if ord(ch) not in VARIANT_CODEPOINTS) or seq


def in_test(seq: str, test_fraction: float) -> bool:
  digest = hashlib.sha1(base_of(seq).encode()).digest()
  return int.from_bytes(digest[:4], "big") / 2**32 < test_fraction


def pick_tags(keywords: dict[str, list[str]], count: int) -> list[str]:
  """The `count` most frequent keywords, skipping any that marks exactly the same emoji as a
  more frequent one (it would be a duplicate column, not a tag)."""
  freq = collections.Counter(k for ks in keywords.values() for k in set(ks))
  members = collections.defaultdict(set)
  for seq, ks in keywords.items():
    for k in ks:
      members[k].add(seq)
  chosen, seen = [], set()
  for tag, _ in freq.most_common():
    key = frozenset(members[tag])
    if key in seen:
      continue
    seen.add(key)
    chosen.append(tag)
    if len(chosen) == count:
      break
  return chosen


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="new folder; train/ and test/ are made inside it")
  ap.add_argument("--tags", type=int, default=20, help="number of most frequent keywords kept")
  ap.add_argument("--size", type=int, default=96, help="image side in pixels")
  ap.add_argument("--test_fraction", type=float, default=0.15)
  args = ap.parse_args(argv)
  for path in (FONT, os.path.join(CLDR, "annotations", "en.xml")):
    if not os.path.exists(path):
      sys.exit(f"emoji_folder: {path} missing (apt-get install fonts-noto-color-emoji unicode-cldr-core)")
  if os.path.exists(args.out) and os.listdir(args.out):
    sys.exit(f"emoji_folder: {args.out} exists and is not empty; name a new folder")

  font = ImageFont.truetype(FONT, BITMAP_SIZE)
  images = {}
  for seq, ks in read_keywords(CLDR).items():
    img = render(font, seq, args.size)
    if img is not None:
      images[seq] = (img, ks)
  tags = pick_tags({s: ks for s, (_, ks) in images.items()}, args.tags)
  counts = collections.Counter()
  for split in ("train", "test"):
    os.makedirs(os.path.join(args.out, split))
  for seq, (img, ks) in images.items():
    mine = [t for t in tags if t in ks]
    split = "test" if in_test(seq, args.test_fraction) else "train"
    counts[split] += 1
    name = "u" + "_".join(f"{ord(ch):x}" for ch in seq)
    img.save(os.path.join(args.out, split, name + ".png"))
    with open(os.path.join(args.out, split, name + ".txt"), "w") as f:
      f.write(", ".join(t.replace(" ", "_") for t in mine))
  print(f"emoji_folder: {counts['train']} train + {counts['test']} test images, "
        f"{len(tags)} tags: {', '.join(tags)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
