"""Where each WD-tagger tool looks for a model, and whether a vocabulary's rows mean to it what
they mean to us (`sw-zoo export --layout ...`).

    plan = tool_layouts.plan(tags, "kohya", force=False)     # LayoutRefused if it cannot fit
    plan.rows, plan.tags, plan.notes                          # output row -> model row, the tool's csv
    entry = tool_layouts.describe(tags)                       # config.json `tags.layout`

The four layouts and what lands where (`--out OUT`, `--name NAME`):

  bundle   OUT/ = a model bundle: config.json, params.msgpack, selected_tags.csv, model.onnx.
           SmilingWolf's wd-tagger Space reads model.onnx + selected_tags.csv and finds ratings,
           general and character tags by category (np.where), so any row order works; the
           rows stay the model's own and nothing is adapted (only described, in config.json
           `tags.layout` and the ONNX metadata).
  kohya    OUT is sd-scripts' --model_dir; writes OUT/<NAME with "/" -> "_">/model.onnx and
           selected_tags.csv, which `tag_images_by_wd14_tagger.py --onnx --model_dir OUT
           --repo_id NAME` loads (an existing folder is used as-is, nothing is downloaded). The
           script feeds 448 px (hard-coded) to the graph, so this layout is always 448.
  webui    OUT is the WebUI's models/TaggerOnnx; writes OUT/wd-v1-4-convnextv2-tagger-v2/model.onnx
           and selected_tags.csv. The extension (picobyte's maintained fork of
           stable-diffusion-webui-wd14-tagger) scans every folder there holding exactly one .onnx
           and a .csv, but turns only that one folder name into a local model; any other name it
           does not know makes its model-list refresh raise NotImplementedError (no model shows),
           and the names of its built-in models are downloaded from the Hub whatever the folder
           holds. So NAME is fixed (another needs --force), and the model appears in the UI under
           that name.
  comfyui  OUT is ComfyUI-WD14-Tagger's flat models/ folder; writes OUT/<NAME>.onnx and
           OUT/<NAME>.csv beside the other models. Only those two files are ours.

What the tools assume of selected_tags.csv (row i = output i), and what we do about it:

  * kohya: exactly 4 rating rows, then every general row, then every character row. It takes
    outputs 0-3 as the ratings and names output 4+i after the i-th general row, then the
    character rows; any other row shifts every name after it.
  * webui: the first 4 rows are the ratings, every later row is a tag (any category).
  * comfyui: ratings are ignored; rows from the first general row up to the first character row
    are general, rows from the first character row to the end are characters. With no character
    row the slice `result[None:]` makes every row, ratings included, a character too; with no
    general row every row before the first character (ratings too) becomes general.
  * space (the bundle): finds rows by category; rows of other categories are never shown.

Row order is fixed without loss for the tool layouts: the head's output columns and the csv rows
are permuted together into rating, general, character order (params.msgpack of a bundle keeps
the model's order; the tool layouts have no params file). A mismatch that no order fixes (a
rating count other than 4 for kohya / webui, categories the tool does not know for kohya /
ComfyUI, no character or general rows for ComfyUI) is refused with an explanation naming the
tool, the count and the consequence, unless `force`. With `force` the export is adapted so the
tool still names every tag right:
  * missing rating rows become placeholder ratings ("placeholder_rating_<k>") whose output is a
    constant 0 (zero head column, bias -1e4), so the positional tools line up; ratings beyond 4
    are written as general rows (the tools have only 4 rating slots);
  * rows of other categories (artist, copyright, meta ...) are written as general rows
    (category 0) in the general block: the tools know only ratings, general and character, and a
    correctly named tag shown as "general" beats a dropped or misnamed one;
  * ComfyUI without character (general) rows gets one placeholder row of that category with a
    constant-0 output, which sets the tool's slice index and is never above a threshold.
The bundle layout is never adapted (sw_zoo's own Tagger and the Space read categories); its
config.json says which tools it fits and why not.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from sw_zoo.data import vocab as vocab_lib
from sw_zoo.inference.bundle import ONNX_FILE, TAGS_FILE

BUNDLE, KOHYA, WEBUI, COMFYUI = "bundle", "kohya", "webui", "comfyui"
SPACE = "space"  # the tool that reads the bundle layout
KOHYA_IMAGE_SIZE = 448  # tag_images_by_wd14_tagger.py: IMAGE_SIZE = 448, fed as-is to the graph
NUM_RATINGS = 4  # the WD convention every positional tool hard-codes
# Logit of a placeholder output: sigmoid(-1e4) is exactly 0 in float32 and float16 (and -1e4
# is representable in float16), so a placeholder never wins an argmax against a real rating.
PLACEHOLDER_LOGIT = -1.0e4
# The one TaggerOnnx folder name the WebUI extension loads as a local model (see the docstring).
WEBUI_LOCAL_NAME = "wd-v1-4-convnextv2-tagger-v2"

_R, _G, _C = vocab_lib.CATEGORY_RATING, vocab_lib.CATEGORY_GENERAL, vocab_lib.CATEGORY_CHARACTER
_KNOWN = (_R, _G, _C)


@dataclasses.dataclass(frozen=True)
class ToolLayout:
  name: str
  tool: str  # who loads it, as users know it
  out: str  # what --out is for this tool
  files: str  # what lands where
  fixed_image_size: int | None = None  # the tool feeds this size whatever the graph says
  flat: bool = False  # files beside other models (no folder of our own)


LAYOUTS: dict[str, ToolLayout] = {
    BUNDLE: ToolLayout(BUNDLE, "SmilingWolf's wd-tagger Space / sw_zoo", "the bundle directory",
                       "OUT/{config.json, params.msgpack, selected_tags.csv, model.onnx}"),
    KOHYA: ToolLayout(KOHYA, "kohya sd-scripts tag_images_by_wd14_tagger.py", "its --model_dir",
                      "OUT/<NAME with / -> _>/{model.onnx, selected_tags.csv}", fixed_image_size=KOHYA_IMAGE_SIZE),
    WEBUI: ToolLayout(WEBUI, "stable-diffusion-webui-wd14-tagger", "models/TaggerOnnx",
                      f"OUT/{WEBUI_LOCAL_NAME}/{{model.onnx, selected_tags.csv}}"),
    COMFYUI: ToolLayout(COMFYUI, "ComfyUI-WD14-Tagger", "its models/ folder", "OUT/<NAME>.onnx + OUT/<NAME>.csv",
                        flat=True),
}


@dataclasses.dataclass(frozen=True)
class Target:
  """Where one export lands: `folder` is the directory the export owns (None for the flat
  ComfyUI layout, which owns only its two files)."""
  folder: str | None
  onnx_path: str
  tags_path: str


def check_name(name: str, layout: str) -> str:
  """A model name usable as one folder / file name (kohya's repo id may hold one "/")."""
  bare = name.replace("/", "_") if layout == KOHYA else name
  if not bare or bare in (".", "..") or "/" in bare or os.sep in bare or "\0" in bare or bare.startswith("."):
    raise ValueError(f"--name {name!r}: not usable as a {'folder' if not LAYOUTS[layout].flat else 'file'} name "
                     "(no path separators, not empty, not starting with '.')")
  return bare


def check_webui_name(name: str, *, force: bool) -> None:
  """ValueError unless `name` is the folder the WebUI extension loads locally (or `force`)."""
  if name != WEBUI_LOCAL_NAME and not force:
    raise ValueError(
        f"--name {name!r} with --layout webui: the WebUI tagger extension loads a model of its own from "
        f"models/TaggerOnnx only from a folder named {WEBUI_LOCAL_NAME!r}; a folder of any other name it "
        "does not know stops its model list from loading at all (NotImplementedError), and the names of its "
        "built-in models are downloaded from the Hub instead. Leave out --name (or --force to write it anyway)")


def default_name(source_dir: str, layout: str | None = None) -> str:
  """`sw_zoo_<run or bundle folder name>`, reduced to characters every tool's file listing keeps
  (the WebUI layout: the one folder name the extension loads, `WEBUI_LOCAL_NAME`)."""
  if layout == WEBUI:
    return WEBUI_LOCAL_NAME
  base = os.path.basename(os.path.normpath(source_dir))
  if base == "bundle":  # <workdir>/bundle: the run's name says more
    base = os.path.basename(os.path.dirname(os.path.normpath(source_dir)))
  return "sw_zoo_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "model")


def target(layout: str, out: str, name: str) -> Target:
  out = os.path.abspath(os.path.expanduser(out))
  if layout == BUNDLE:
    return Target(out, os.path.join(out, ONNX_FILE), os.path.join(out, TAGS_FILE))
  bare = check_name(name, layout)
  if LAYOUTS[layout].flat:
    return Target(None, os.path.join(out, bare + ".onnx"), os.path.join(out, bare + ".csv"))
  folder = os.path.join(out, bare)
  return Target(folder, os.path.join(folder, ONNX_FILE), os.path.join(folder, TAGS_FILE))


def usage_hint(layout: str, out: str, name: str) -> str:
  """How the tool is pointed at what was written."""
  if layout == KOHYA:
    return (f"python finetune/tag_images_by_wd14_tagger.py --onnx --model_dir {out} --repo_id {name} "
            "--batch_size 8 IMAGE_DIR")
  if layout == WEBUI:
    return f"WebUI Tagger tab: pick interrogator {check_name(name, layout)!r} (models/TaggerOnnx = {out})"
  if layout == COMFYUI:
    return f"ComfyUI WD14 Tagger node: model {check_name(name, layout)!r} (models folder {out})"
  return "wd-tagger Space / sw_zoo: load the bundle directory"


# ---- The vocabulary as each tool reads it ----------------------------------------------------


def _runs(categories: np.ndarray) -> dict[str, list[list[int]]]:
  """Half-open [start, stop) row runs per category name, in first-row order."""
  runs: dict[str, list[list[int]]] = {}
  start = 0
  for i in range(1, len(categories) + 1):
    if i == len(categories) or categories[i] != categories[start]:
      runs.setdefault(vocab_lib.category_name(int(categories[start])), []).append([start, i])
      start = i
  return runs


def _rank(code: int) -> int:
  # WD order: ratings, general (and, adapted, other categories as general), characters.
  return {_R: 0, _G: 1, _C: 3}.get(int(code), 2)


def _in_wd_order(categories: np.ndarray) -> bool:
  ranks = np.array([_rank(c) for c in categories])
  return bool(np.all(np.diff(ranks) >= 0))


def _others(categories: np.ndarray) -> dict[str, int]:
  codes, counts = np.unique(categories[~np.isin(categories, _KNOWN)], return_counts=True)
  return {vocab_lib.category_name(int(c)): int(n) for c, n in zip(codes, counts)}


def _describe_others(others: dict[str, int]) -> str:
  return ", ".join(f"{n} {name}" for name, n in others.items()) + " row" + ("s" if sum(others.values()) != 1 else "")


@dataclasses.dataclass
class Findings:
  """What a tool would get wrong: `order` is fixed by permuting rows; `refused` needs --force."""
  tool: str
  order: list[str] = dataclasses.field(default_factory=list)
  refused: list[str] = dataclasses.field(default_factory=list)

  @property
  def fits(self) -> bool:
    return not self.order and not self.refused


def findings(tags: vocab_lib.TagVocab, layout: str) -> Findings:
  """Checks `tags` (rows in the model's output order) against what `layout`'s tool assumes."""
  cats = np.asarray(tags.categories)
  n_r, n_g, n_c = (int(np.sum(cats == c)) for c in (_R, _G, _C))
  others = _others(cats)
  tool = LAYOUTS[layout].tool if layout != SPACE else "SmilingWolf's wd-tagger Space"
  f = Findings(tool)
  if layout == SPACE:
    if others:
      f.refused.append(f"{_describe_others(others)}: the Space reads categories 9, 0 and 4 only, so these "
                       "tags are never shown (sw_zoo's Tagger reports them under Prediction.other)")
    return f
  if layout in (KOHYA, WEBUI) and n_r != NUM_RATINGS:
    shift = NUM_RATINGS - n_r
    if layout == KOHYA and shift > 0:
      what = (f"it would read the first {shift} general tag{'s' * (shift > 1)} as ratings and report every general "
              f"and character tag under the name of the tag {shift} row{'s' * (shift > 1)} before it")
    elif layout == KOHYA:
      what = (f"it would report {-shift} rating{'s' * (-shift > 1)} as general tags and every tag under the name "
              f"of the tag {-shift} row{'s' * (-shift > 1)} after it, and stop with an IndexError when one of the "
              f"last {-shift} outputs reaches the character threshold")
    elif shift > 0:
      what = (f"{shift} general tag{'s' * (shift > 1)} would be shown as ratings (and never as tags)")
    else:
      what = f"{-shift} rating{'s' * (-shift > 1)} would be shown as ordinary tags"
    f.refused.append(f"{n_r} rating rows (category 9), but the tool takes the first {NUM_RATINGS} outputs as the "
                     f"ratings: {what}")
  if others and layout == KOHYA:
    f.refused.append(f"{_describe_others(others)}: the tool names only rating, general and character rows but "
                     "counts every output, so every tag after the first of these rows would be reported under "
                     "another tag's name (and it stops with an IndexError when one of the last outputs reaches "
                     "the character threshold)")
  if others and layout == COMFYUI:
    f.refused.append(f"{_describe_others(others)}: the tool knows only general and character rows; rows before "
                     "the first general row are dropped, rows between the first general and the first character "
                     "row are shown as general tags and rows after it as characters")
  if layout == COMFYUI and n_c == 0:
    f.refused.append("no character rows (category 4): the tool then slices result[None:], so every row, ratings "
                     "and general tags included, is also reported as a character tag")
  if layout == COMFYUI and n_g == 0 and n_r:
    f.refused.append("no general rows (category 0): the tool then slices result[None:first character row], so the "
                     "rating rows are reported as general tags")
  needs_order = not _in_wd_order(cats) if layout in (KOHYA, COMFYUI) else \
      bool(n_r) and not np.all(cats[:n_r] == _R)
  if needs_order:
    f.order.append("rows are not in rating, general, character order (the tool reads them by position)")
  return f


def reason(found: Findings) -> str:
  """One line for config.json: "fits" or what is wrong."""
  if found.fits:
    return "fits"
  text = "; ".join(found.refused + found.order)
  if found.refused:
    return text
  return text + " (an export with this --layout reorders the rows without loss)"


def describe(tags: vocab_lib.TagVocab) -> dict[str, Any]:
  """The `tags.layout` entry of a bundle's config.json (also the ONNX `sw_zoo.tags.layout`):
  row ranges per category and, per tool, "fits" or why not."""
  cats = np.asarray(tags.categories)
  tools = {SPACE: reason(findings(tags, SPACE))}
  tools.update({name: reason(findings(tags, name)) for name in (KOHYA, WEBUI, COMFYUI)})
  return {"rows": _runs(cats), "wd_order": _in_wd_order(cats), "tools": tools}


# ---- Adapting the rows for a tool ------------------------------------------------------------


class LayoutRefused(ValueError):
  """The vocabulary does not fit the tool and --force was not given."""


@dataclasses.dataclass
class Plan:
  """Output row j of the tool's graph is model row `rows[j]` (-1: a constant-0 placeholder);
  `tags` is the tool's selected_tags.csv; `notes` say what was changed."""
  layout: str
  rows: np.ndarray
  tags: vocab_lib.TagVocab
  notes: list[str]

  @property
  def identity(self) -> bool:
    return len(self.rows) == 0 or (bool(np.all(self.rows >= 0)) and np.array_equal(self.rows, np.arange(len(self.rows))))


def _placeholder(kind: str, k: int | None, taken: set[str]) -> vocab_lib.Tag:
  base = f"placeholder_{kind}" + (f"_{k}" if k is not None else "")
  name, n = base, 1
  while name in taken:
    n += 1
    name = f"{base}_{n}"
  taken.add(name)
  return vocab_lib.Tag(name=name, category=_R if kind == "rating" else _G if kind == "general" else _C)


def explain_refusal(found: Findings, layout: str) -> str:
  lines = [f"the vocabulary does not fit {found.tool} (--layout {layout}):"]
  lines += [f"  - {p}" for p in found.refused]
  lines += ["Nothing was written. --force writes an adapted export the tool names correctly: missing rating rows "
            "become constant-0 placeholder ratings, ratings beyond 4 and rows of other categories are written as "
            "general rows, and ComfyUI gets a constant-0 placeholder row for a missing general or character "
            "category (see `sw-zoo export --help`). The bundle layout (no --layout) keeps every category as is."]
  return "\n".join(lines)


def plan(tags: vocab_lib.TagVocab, layout: str, *, force: bool = False) -> Plan:
  """The rows `layout`'s tool gets (see the module docstring); LayoutRefused if a mismatch needs
  `force`. The bundle layout is never adapted."""
  n = len(tags)
  if layout == BUNDLE:
    return Plan(layout, np.arange(n), tags, [])
  found = findings(tags, layout)
  if found.refused and not force:
    raise LayoutRefused(explain_refusal(found, layout))
  cats = np.asarray(tags.categories)
  ratings = [int(i) for i in np.flatnonzero(cats == _R)]
  general = [int(i) for i in np.flatnonzero(cats == _G)]
  others = [int(i) for i in np.flatnonzero(~np.isin(cats, _KNOWN))]
  character = [int(i) for i in np.flatnonzero(cats == _C)]
  notes: list[str] = []
  taken = set(tags.names)
  rows: list[int] = []
  out_tags: list[vocab_lib.Tag] = []

  def add(index: int, category: int | None = None) -> None:
    tag = tags[index]
    rows.append(index)
    out_tags.append(tag if category is None or category == tag.category else dataclasses.replace(tag, category=category))

  def add_placeholder(kind: str, k: int | None = None) -> None:
    rows.append(-1)
    out_tags.append(_placeholder(kind, k, taken))

  positional = layout in (KOHYA, WEBUI)
  keep_ratings = ratings[:NUM_RATINGS] if positional else ratings
  for i in keep_ratings:
    add(i)
  if positional and len(ratings) < NUM_RATINGS:
    for k in range(len(ratings), NUM_RATINGS):
      add_placeholder("rating", k)
    notes.append(f"{NUM_RATINGS - len(ratings)} constant-0 placeholder rating row(s) added after the "
                 f"{len(ratings)} real one(s), so the tool's first {NUM_RATINGS} outputs are ratings")
  extra_ratings = ratings[NUM_RATINGS:] if positional else []
  if extra_ratings:
    notes.append(f"{len(extra_ratings)} rating row(s) beyond the first {NUM_RATINGS} written as general rows")
  if layout == COMFYUI and not general and not others and ratings:
    add_placeholder("general")
    notes.append("one constant-0 placeholder general row added (the tool needs a general row to start its "
                 "general slice after the ratings)")
  for i in extra_ratings:
    add(i, _G)
  for i in general:
    add(i)
  # webui shows every row after the ratings as a tag whatever its category: no rewrite needed.
  rewrite = None if layout == WEBUI else _G
  for i in others:
    add(i, rewrite)
  if others and rewrite is not None:
    notes.append(f"{_describe_others(_others(cats))} written as general rows (category 0) in the general block, "
                 "so the tool names them correctly")
  for i in character:
    add(i)
  if layout == COMFYUI and not character:
    add_placeholder("character")
    notes.append("one constant-0 placeholder character row added at the end (without a character row the tool "
                 "reports every row as a character)")
  result = Plan(layout, np.asarray(rows, np.int64), vocab_lib.TagVocab(out_tags), notes)
  reordered = [r for r in rows if r >= 0] != list(range(n))
  if reordered:
    notes.insert(0, "rows reordered to rating, general, character (head outputs and csv rows permuted together; "
                    "no score changes)")
  return result


def adapt_head(params: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
  """The params tree with its head columns taken in `rows` order (placeholders: a zero column
  and PLACEHOLDER_LOGIT bias, a constant-0 score). Other params are shared, not copied."""
  head = params["head"]
  kernel, bias = np.asarray(head["kernel"], np.float32), np.asarray(head["bias"], np.float32)
  real = rows >= 0
  new_kernel = np.zeros((kernel.shape[0], len(rows)), np.float32)
  new_kernel[:, real] = kernel[:, rows[real]]
  new_bias = np.full((len(rows),), PLACEHOLDER_LOGIT, np.float32)
  new_bias[real] = bias[rows[real]]
  return {**params, "head": {**head, "kernel": new_kernel, "bias": new_bias}}


def metadata(layout: str, tags: vocab_lib.TagVocab, written: Plan) -> dict[str, str]:
  """ONNX metadata_props describing the rows of the written graph (and how they were adapted)."""
  entry = {"layout": layout, **describe(written.tags)}
  if layout != BUNDLE:
    entry["adapted"] = written.notes or ["none"]
    entry["model_rows"] = _runs_of_rows(written.rows)
  return {"sw_zoo.tags.layout": json.dumps(entry, sort_keys=True)}


def _runs_of_rows(rows: np.ndarray) -> list[list[int]]:
  """Output row -> model row map as [first output, first model row (-1 placeholder), length] runs."""
  runs: list[list[int]] = []
  for j, r in enumerate(rows.tolist()):
    if runs and ((r == -1 and runs[-1][1] == -1) or (r >= 0 and runs[-1][1] >= 0 and runs[-1][1] + runs[-1][2] == r)):
      runs[-1][2] += 1
    else:
      runs.append([j, r, 1])
  return runs
