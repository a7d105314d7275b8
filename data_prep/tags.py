"""Tags for data_prep: normalisation, captions, ratings, aliases, blacklists, vocabulary choice.

Conventions (documented for users in `python -m data_prep --help`):

* **Names** are Danbooru style: lower case, words joined by underscores. Caption tags written
  with spaces (`long hair`) or prompt escapes (`hatsune miku \\(cosplay\\)`) become `long_hair`,
  `hatsune_miku_(cosplay)`.
* **Captions** (`img.txt`) are comma-separated when they contain a comma (kohya / WD style),
  otherwise whitespace-separated (booru downloaders' `tag_string`).
* **Ratings** become the four WD rating tags (category 9): general, sensitive, questionable,
  explicit. Danbooru's 2022 change added `g` (General) and renamed Safe to Sensitive, keeping old
  Safe posts at `s` until someone re-rated them, so `s` (and the word "safe") means *sensitive*
  by default; `rating_s_as="general"` treats a pre-2022 `s` as general instead (e.g. for the
  SFW-only Danbooru2021 subsets SW-CV-ModelZoo trained on). Caption tags `rating:x` /
  `rating_x` are read as the post's rating.
* **Vocabulary order** (`selected_tags.csv`, WD order): the 4 ratings, then general (0), then
  character (4), then the other kept categories in the order copyright (3), artist (1), meta (5),
  then any other codes ascending; within a category by training-split count (descending), ties by
  name.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import re
from typing import Iterable, Mapping, NamedTuple

from sw_zoo.data.vocab import (CATEGORY_CHARACTER, CATEGORY_GENERAL, CATEGORY_NAMES,
                               CATEGORY_RATING, Tag, TagVocab)

RATING_TAGS = ("general", "sensitive", "questionable", "explicit")
# The tag_id values WD-tagger selected_tags.csv files use for the rating rows.
RATING_TAG_IDS = {"general": 9999999, "sensitive": 9999998, "questionable": 9999997,
                  "explicit": 9999996}
CATEGORY_ORDER = (CATEGORY_RATING, CATEGORY_GENERAL, CATEGORY_CHARACTER, 3, 1, 5)
DEFAULT_CATEGORIES = (CATEGORY_RATING, CATEGORY_GENERAL, CATEGORY_CHARACTER)
_CATEGORY_CODES = {name: code for code, name in CATEGORY_NAMES.items()}


class RawTag(NamedTuple):
  """A tag as a source gives it: name (not yet normalised), category and site tag id if known."""
  name: str
  category: int | None = None
  tag_id: int | None = None


def normalize_tag(name: str) -> str:
  name = name.replace("\\(", "(").replace("\\)", ")")
  return "_".join(name.split()).lower()


def parse_tag_string(text: str) -> list[str]:
  """A caption / tag string -> normalised tag names, in order, duplicates kept."""
  parts = re.split(r"[,\n]", text) if "," in text else text.split()
  return [t for t in (normalize_tag(p) for p in parts) if t]


def parse_rating(value: object, rating_s_as: str = "sensitive") -> str | None:
  """'g'/'s'/'q'/'e', full names, 'safe', 'rating:x' -> a WD rating tag; None if unrecognised."""
  if value is None:
    return None
  text = str(value).strip().lower()
  for prefix in ("rating:", "rating_"):
    if text.startswith(prefix):
      text = text[len(prefix):]
  return {"g": "general", "general": "general", "s": rating_s_as, "safe": rating_s_as,
          "sensitive": "sensitive", "q": "questionable", "questionable": "questionable",
          "e": "explicit", "explicit": "explicit"}.get(text)


def is_rating_tag(name: str) -> bool:
  return name.startswith(("rating:", "rating_")) and parse_rating(name) is not None


def parse_category(text: str | int) -> int:
  if isinstance(text, int):
    return text
  text = text.strip().lower()
  if text in _CATEGORY_CODES:
    return _CATEGORY_CODES[text]
  try:
    code = int(text)
  except ValueError:
    raise ValueError(f"unknown tag category {text!r}; use a number or one of "
                     f"{sorted(_CATEGORY_CODES)}") from None
  if code < 0:
    raise ValueError(f"tag category must be non-negative, got {code}")
  return code


def parse_categories(spec: str) -> tuple[int, ...]:
  """'general,character,rating' or 'all' -> category codes ('all' -> empty = keep all)."""
  if spec.strip().lower() == "all":
    return ()
  return tuple(dict.fromkeys(parse_category(p) for p in spec.split(",") if p.strip()))


def parse_per_category(spec: str | None, what: str) -> dict[int | None, int]:
  """'5000' -> {None: 5000} (every category); 'general=5000,character=2000' -> {0: 5000, 4: 2000}."""
  if spec is None or not str(spec).strip():
    return {}
  result: dict[int | None, int] = {}
  for part in str(spec).split(","):
    part = part.strip()
    if not part:
      continue
    key, _, value = part.rpartition("=")
    try:
      number = int(value)
    except ValueError:
      raise ValueError(f"{what}: {part!r} is not N or CATEGORY=N") from None
    if number < 0:
      raise ValueError(f"{what}: {part!r} must be non-negative")
    result[parse_category(key) if key else None] = number
  return result


def _read_rows(path: str) -> list[list[str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return [row for row in csv.reader(f) if row and not row[0].lstrip().startswith("#")]


def load_aliases(path: str | os.PathLike) -> dict[str, str]:
  """old,new CSV (an optional header like `antecedent_name,consequent_name` is skipped) ->
  {old: final new}, chains (a->b, b->c) resolved to a->c."""
  path = os.fspath(path)
  raw: dict[str, str] = {}
  for i, row in enumerate(_read_rows(path)):
    if len(row) < 2:
      raise ValueError(f"{path}: row {i + 1} {row} needs two columns: old,new")
    old, new = normalize_tag(row[0]), normalize_tag(row[1])
    if i == 0 and old in ("antecedent_name", "antecedent", "old", "from", "alias"):
      continue
    if old and new and old != new:
      raw[old] = new
  resolved = {}
  for old in raw:
    seen, new = {old}, raw[old]
    while new in raw and new not in seen:
      seen.add(new)
      new = raw[new]
    resolved[old] = new
  return resolved


def load_blacklist(path: str | os.PathLike) -> frozenset[str]:
  """One tag per line (or comma-separated); '#' starts a comment."""
  names = set()
  with open(os.fspath(path), encoding="utf-8") as f:
    for line in f:
      line = line.split("#", 1)[0]
      names.update(t for t in (normalize_tag(p) for p in line.split(",")) if t)
  return frozenset(names)


@dataclasses.dataclass(frozen=True)
class TagInfo:
  category: int
  tag_id: int | None = None


def load_tag_table(path: str | os.PathLike) -> dict[str, TagInfo]:
  """Known tags with categories: a CSV or JSON-lines file.

  CSV with a header naming `name` and `category` (or `type`) columns, optionally `tag_id` / `id`;
  or a headerless CSV `name,category[,...]` (the common Danbooru tags CSV:
  name,category,count,aliases); or JSON lines with `name`, `category`, optional `id`
  (Danbooru's tags export).
  """
  path = os.fspath(path)
  table: dict[str, TagInfo] = {}

  def add(name, category, tag_id, where):
    try:
      info = TagInfo(parse_category(str(category)),
                     int(tag_id) if tag_id not in (None, "") else None)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    name = normalize_tag(str(name))
    if name:
      table.setdefault(name, info)

  if path.endswith((".jsonl", ".json", ".ndjson")):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          obj = json.loads(line)
          add(obj["name"], obj["category"], obj.get("id", obj.get("tag_id")), f"{path}:{n}")
    return table
  rows = _read_rows(path)
  header = [c.strip().lower() for c in rows[0]] if rows else []
  if "name" in header and ("category" in header or "type" in header):
    name_col = header.index("name")
    cat_col = header.index("category" if "category" in header else "type")
    id_col = next((header.index(c) for c in ("tag_id", "id") if c in header), None)
    for n, row in enumerate(rows[1:], 2):
      add(row[name_col], row[cat_col], row[id_col] if id_col is not None else None,
          f"{path}:{n}")
  else:
    for n, row in enumerate(rows, 1):
      if len(row) < 2:
        raise ValueError(f"{path}:{n}: expected name,category[,...], got {row}")
      add(row[0], row[1], None, f"{path}:{n}")
  return table


@dataclasses.dataclass
class TagStats:
  """Tag occurrences removed on the way, for the report."""
  aliased: int = 0
  blacklisted: int = 0
  other_category: int = 0
  unknown: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def as_dict(self, top: int = 50) -> dict:
    return {"aliased": self.aliased, "blacklisted": self.blacklisted,
            "dropped_other_category": self.other_category,
            "unknown": {"occurrences": sum(self.unknown.values()), "distinct": len(self.unknown),
                        "most_common": [[n, c] for n, c in self.unknown.most_common(top)]}}


class TagMapper:
  """Raw tags of one post -> (name, category, tag_id) triples that may enter the vocabulary.

  Normalises names, applies aliases and the blacklist, looks up categories: the source's own
  category wins; else the tag table's; a tag missing from a given tag table is *unknown* (counted,
  dropped); without a table everything uncategorised is general. Tags outside the kept categories
  are dropped. Rating-like caption tags (`rating:q`) are returned separately as the rating.
  """

  def __init__(self, *, aliases: Mapping[str, str] | None = None,
               blacklist: Iterable[str] = (), tag_table: Mapping[str, TagInfo] | None = None,
               categories: tuple[int, ...] = DEFAULT_CATEGORIES, rating_s_as: str = "sensitive"):
    if rating_s_as not in ("sensitive", "general"):
      raise ValueError(f"rating_s_as must be 'sensitive' or 'general', got {rating_s_as!r}")
    self.aliases = dict(aliases or {})
    self.blacklist = frozenset(blacklist)
    self.tag_table = tag_table
    self.categories = frozenset(categories)  # Empty: keep every category.
    self.rating_s_as = rating_s_as

  def keeps(self, category: int) -> bool:
    return not self.categories or category in self.categories

  @property
  def uses_ratings(self) -> bool:
    return self.keeps(CATEGORY_RATING)

  def rating(self, value: object) -> str | None:
    return parse_rating(value, self.rating_s_as)

  def map(self, raw_tags: Iterable[RawTag], stats: TagStats | None = None
          ) -> tuple[list[tuple[str, int, int | None]], str | None]:
    """-> ([(name, category, tag_id), ...] unique by name in first-seen order, caption rating)."""
    out: dict[str, tuple[str, int, int | None]] = {}
    rating = None
    for raw in raw_tags:
      name = normalize_tag(raw.name)
      if not name:
        continue
      if is_rating_tag(name):
        rating = rating or self.rating(name)
        continue
      if name in self.aliases:
        name = self.aliases[name]
        if stats is not None:
          stats.aliased += 1
      if name in self.blacklist:
        if stats is not None:
          stats.blacklisted += 1
        continue
      category, tag_id = raw.category, raw.tag_id
      info = self.tag_table.get(name) if self.tag_table is not None else None
      if info is not None:
        category = info.category if category is None else category
        tag_id = info.tag_id if tag_id is None else tag_id
      elif category is None:
        if self.tag_table is not None:
          if stats is not None:
            stats.unknown[name] += 1
          continue
        category = CATEGORY_GENERAL
      if category == CATEGORY_RATING or not self.keeps(category):
        if stats is not None:
          stats.other_category += 1
        continue
      if name not in out:
        out[name] = (name, category, tag_id)
    return list(out.values()), rating


def category_rank(category: int) -> tuple[int, int]:
  if category in CATEGORY_ORDER:
    return (CATEGORY_ORDER.index(category), 0)
  return (len(CATEGORY_ORDER), category)


def select_vocab(counts: Mapping[str, int], categories: Mapping[str, int],
                 tag_ids: Mapping[str, int | None], *, rating_counts: Mapping[str, int] | None,
                 min_count: Mapping[int | None, int], top_k: Mapping[int | None, int]
                 ) -> TagVocab:
  """Chooses the label set from training-split counts.

  `min_count` / `top_k` map a category (or None: every category without its own entry) to a
  threshold; a tag must pass both. `rating_counts` None leaves the ratings out; otherwise all
  four rating tags come first (even with count 0, so rating heads always have 4 outputs).
  """
  by_category: dict[int, list[tuple[str, int]]] = collections.defaultdict(list)
  for name, count in counts.items():
    category = categories[name]
    if name in RATING_TAGS and rating_counts is not None:
      continue  # Would collide with the rating rows.
    threshold = min_count.get(category, min_count.get(None, 1))
    if count >= max(threshold, 1):
      by_category[category].append((name, count))
  tags = []
  if rating_counts is not None:
    tags += [Tag(name=r, category=CATEGORY_RATING, count=int(rating_counts.get(r, 0)),
                 tag_id=RATING_TAG_IDS[r]) for r in RATING_TAGS]
  for category in sorted(by_category, key=category_rank):
    chosen = sorted(by_category[category], key=lambda nc: (-nc[1], nc[0]))
    k = top_k.get(category, top_k.get(None))
    if k is not None:
      chosen = chosen[:k]
    tags += [Tag(name=n, category=category, count=int(c), tag_id=int(tag_ids.get(n) or 0))
             for n, c in chosen]
  return TagVocab(tags)
