"""Which given tags are probably wrong and which missing tags probably belong: confident learning
on out-of-sample predictions, one tag at a time.

This is cleanlab's multi-label issue finding (`cleanlab.multilabel_classification.filter.
find_multilabel_issues_per_class` with its defaults: one-vs-rest binary problems, calibrated
confident joint, `filter_by='prune_by_noise_rate'`, `min_examples_per_class=1`), which
SW-CV-ModelZoo's cleanlab script runs over a booru dataset. It is re-derived here in numpy so
that all tags are handled at once in two streaming passes over row chunks (sums, then counts and
the pairs the model disagrees with), without cleanlab's per-class Python loop and without the
images x tags matrices in memory; tests/test_curation.py checks it flags exactly what cleanlab
flags.

For one tag with out-of-sample probability p and given label y on N images:
  * confident thresholds: t1 = mean p over images tagged, t0 = mean (1 - p) over the others;
  * an image is confidently "has the tag" when p >= t1, confidently "lacks it" when 1 - p >= t0
    (both: whichever of p, 1 - p is larger; neither: not counted);
  * the confident joint C[given][guessed] counts those images, its diagonal floored at 1, each
    row rescaled to the given-label count and rounded keeping row totals;
  * C[1][0] given tags are flagged 'wrong': the tagged images with the lowest p; C[0][1] absent
    tags are flagged 'missing': the untagged images with the highest p (a row whose diagonal
    rounded to 0 gives one flag back, so a class always keeps one example, and a class with a
    single example is never flagged);
  * a flag stands only where the model's own call disagrees with the given label: a missing tag
    needs p > 1 - p, a wrong one p < 1 - p (cleanlab's `_reduce_issues`, with its 1e-6 slack
    in favour of the given label).
Each flag's `quality` is the self-confidence, the probability of the given label (p for a given
tag, 1 - p for an absent one): reviewers look at the lowest first.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

_EPS = 1e-6  # cleanlab's FLOATING_POINT_COMPARISON: thresholds are compared with this slack
_THRESHOLD_FLOOR = 2e-6  # cleanlab's CONFIDENT_THRESHOLDS_LOWER_BOUND
_TINY = 1e-100

MISSING = "missing"  # an absent tag the model is confident about
WRONG = "wrong"  # a given tag the model is confident is not there


@dataclasses.dataclass
class TagIssueCounts:
  """Per tag: the confident thresholds and how many given / absent labels were flagged."""
  threshold_present: np.ndarray  # [T] t1 (nan where the tag has no positives)
  threshold_absent: np.ndarray  # [T] t0 (nan where every image has the tag)
  positives: np.ndarray  # [T] images tagged
  num_wrong: np.ndarray  # [T] given tags to flag by the confident joint (before the agreement filter)
  num_missing: np.ndarray  # [T] absent tags to flag by the confident joint (before the agreement filter)


@dataclasses.dataclass
class LabelIssues:
  """Flagged (image row, tag) pairs, most suspicious (lowest quality) first."""
  rows: np.ndarray  # [M] row of the image in the label matrix
  tags: np.ndarray  # [M] tag column
  missing: np.ndarray  # [M] bool: True = absent tag that probably belongs, False = given tag probably wrong
  prob: np.ndarray  # [M] model probability of the tag
  quality: np.ndarray  # [M] probability of the given label (lower = more suspicious)
  per_tag: TagIssueCounts

  def __len__(self) -> int:
    return len(self.rows)


def _round_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Rounds each (a, b) pair to integers keeping round(a + b), as cleanlab's
  round_preserving_sum does: numpy rounding, then the entry with the largest (when short) or
  smallest (when over) rounding residue moves by one."""
  ra, rb = np.round(a), np.round(b)
  short = np.round(np.round(a + b) - (ra + rb))  # -1, 0 or +1 for two entries
  up = short > 0
  down = short < 0
  # Ties in the residue go to the first entry, as argsort's order does in cleanlab.
  a_first_up = (a - ra) >= (b - rb)
  a_first_down = (a - ra) <= (b - rb)
  ra = ra + np.where(up & a_first_up, 1, 0) - np.where(down & a_first_down, 1, 0)
  rb = rb + np.where(up & ~a_first_up, 1, 0) - np.where(down & ~a_first_down, 1, 0)
  return ra.astype(np.int64), rb.astype(np.int64)


class _Counts:
  """Per-tag sums over row chunks: pass 1 gives the confident thresholds, pass 2 the confident
  joint and the candidate pairs (rows where the model's call disagrees with the given label)."""

  def __init__(self, num_tags: int):
    self.n = 0
    self.pos = np.zeros(num_tags, np.int64)
    self.sum_p_pos = np.zeros(num_tags)
    self.sum_q_neg = np.zeros(num_tags)  # sum of 1 - p over images without the tag
    self.joint = np.zeros((4, num_tags), np.int64)  # c00, c01, c10, c11: [given][guessed]
    self.cand: list[tuple[np.ndarray, ...]] = []

  def first(self, lab: np.ndarray, p: np.ndarray) -> None:
    self.n += lab.shape[0]
    self.pos += lab.sum(0)
    self.sum_p_pos += np.where(lab, p, 0.0).sum(0)
    self.sum_q_neg += np.where(lab, 0.0, 1.0 - p).sum(0)

  def thresholds(self) -> tuple[np.ndarray, np.ndarray]:
    neg = self.n - self.pos
    t1 = np.where(self.pos > 0, self.sum_p_pos / np.maximum(self.pos, 1), 2.0)  # 2: no image has it
    t0 = np.where(neg > 0, self.sum_q_neg / np.maximum(neg, 1), 2.0)
    return np.maximum(t1, _THRESHOLD_FLOOR), np.maximum(t0, _THRESHOLD_FLOOR)

  def second(self, lab: np.ndarray, p: np.ndarray, t1: np.ndarray, t0: np.ndarray, row0: int) -> None:
    conf1 = p >= t1 - _EPS
    conf0 = (1.0 - p) >= t0 - _EPS
    counted = conf0 | conf1
    # Both confident: argmax of (1 - p, p), the first on ties; one: that one.
    guess1 = np.where(conf0 & conf1, p > 1.0 - p, conf1)
    for i, (given, guessed) in enumerate(((False, False), (False, True), (True, False), (True, True))):
      self.joint[i] += (counted & (lab == given) & (guess1 == guessed)).sum(0)
    # Only pairs the model calls the other way can survive the final agreement filter.
    missing = ~lab & (p > 1.0 - p + _EPS)
    wrong = lab & (1.0 - p >= p + _EPS)
    r, t = np.nonzero(missing | wrong)
    # Compact dtypes: on a noisy split these pairs are the bulk of the memory.
    self.cand.append(((r + row0).astype(np.int32), t.astype(np.int32), p[r, t], missing[r, t]))

  def prune_counts(self) -> tuple[np.ndarray, np.ndarray]:
    """How many given (wrong) and absent (missing) labels each tag should lose."""
    pos = self.pos
    neg = self.n - pos
    c00, c01, c10, c11 = self.joint
    c00, c11 = np.maximum(c00, 1), np.maximum(c11, 1)
    # Calibrate: each given-label row sums to that label's count, the whole to N.
    rows0 = np.maximum(c00 + c01, _TINY)
    rows1 = np.maximum(c10 + c11, _TINY)
    f00, f01 = c00 / rows0 * neg, c01 / rows0 * neg
    f10, f11 = c10 / rows1 * pos, c11 / rows1 * pos
    scale = (neg + pos) / np.maximum(f00 + f01 + f10 + f11, _TINY)
    r00, r01 = _round_pairs(f00 * scale, f01 * scale)
    r10, r11 = _round_pairs(f10 * scale, f11 * scale)
    # Keep at least one example per (given) class: a diagonal rounded to 0 takes one flag back.
    missing = np.maximum(r01 - (np.maximum(r00, 1) - r00), 0)
    wrong = np.maximum(r10 - (np.maximum(r11, 1) - r11), 0)
    # A class with a single example is never pruned.
    return np.where(pos > 1, wrong, 0), np.where(neg > 1, missing, 0)


def _chunks(labels: Any, probs: Any, n: int, t: int, chunk_rows: int):
  for start in range(0, n, chunk_rows):
    stop = min(n, start + chunk_rows)
    lab = np.asarray(labels[start:stop]).astype(bool)
    p = np.asarray(probs[start:stop], dtype=np.float64)
    if lab.shape != (stop - start, t) or p.shape != (stop - start, t):
      raise ValueError(f"rows {start}-{stop - 1}: labels {lab.shape} / probs {p.shape}, expected {(stop - start, t)}")
    if not np.all(np.isfinite(p)) or p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1:
      raise ValueError(f"probabilities of rows {start}-{stop - 1} must be finite and within [0, 1]")
    yield start, lab, p


def find_label_issues(labels: Any, probs: Any, *, chunk_rows: int = 1024,
                      progress: Callable[[int], None] | None = None) -> LabelIssues:
  """Flags probably-wrong given tags and probably-missing tags.

  Args:
    labels: [N, T] given tags (bool or 0/1), or any object whose row slices `labels[a:b]` give
      such arrays (a sparse label store can hand out dense row chunks).
    probs: [N, T] out-of-sample probabilities (from models that did not train on those images:
      cross-validation folds or a held-out split), an array or memmap, or row-sliceable likewise.
    chunk_rows: rows read at a time. Two sequential passes over the rows; memory is
      O(chunk_rows * T) plus the pairs where the model's call disagrees with the label, so a
      Danbooru-sized split streams from a memory-mapped predictions file.
    progress: called with the number of rows finished, per chunk of each pass.
  """
  n, t = (int(v) for v in probs.shape)
  if tuple(labels.shape) != (n, t) or len(probs.shape) != 2:
    raise ValueError(f"labels {tuple(labels.shape)} and probs {tuple(probs.shape)} must be the same [images, tags] shape")
  counts = _Counts(t)
  for _, lab, p in _chunks(labels, probs, n, t, chunk_rows):
    counts.first(lab, p)
    if progress:
      progress(len(lab))
  t1, t0 = counts.thresholds()
  for start, lab, p in _chunks(labels, probs, n, t, chunk_rows):
    counts.second(lab, p, t1, t0, start)
    if progress:
      progress(len(lab))
  num_wrong, num_missing = counts.prune_counts()
  cand = [np.concatenate(parts) for parts in zip(*counts.cand)] if counts.cand else [np.zeros(0)] * 4
  rows, tags, missing_flags = cand[0].astype(np.int64), cand[1].astype(np.int64), cand[3].astype(bool)
  prob = cand[2].astype(np.float64)
  # Per tag: the `missing` highest-p absent labels and the `wrong` lowest-p given labels (cleanlab
  # ranks by the margin between the two classes, 2p - 1 / 1 - 2p, which orders the same way).
  # Candidates are grouped by (tag, kind) and sorted within, ties broken by row.
  order = np.lexsort((rows, np.where(missing_flags, -prob, prob), missing_flags, tags))
  rows, tags, prob, missing_flags = rows[order], tags[order], prob[order], missing_flags[order]
  group = tags * 2 + missing_flags
  first = np.searchsorted(group, group, side="left")
  rank = np.arange(len(group)) - first
  limit = np.where(missing_flags, num_missing[tags], num_wrong[tags])
  keep = rank < limit
  rows, tags, prob, missing_flags = rows[keep], tags[keep], prob[keep], missing_flags[keep]
  quality = np.where(missing_flags, 1.0 - prob, prob)
  order = np.lexsort((tags, rows, quality))
  nan = np.float64("nan")
  neg = counts.n - counts.pos
  per_tag = TagIssueCounts(np.where(counts.pos > 0, t1, nan), np.where(neg > 0, t0, nan), counts.pos,
                           num_wrong, num_missing)
  return LabelIssues(rows[order], tags[order], missing_flags[order], prob[order], quality[order], per_tag)


def flag_matrix(issues: LabelIssues, shape: tuple[int, int]) -> np.ndarray:
  """[N, T] bool: True where a (row, tag) pair was flagged (for comparing with other tools)."""
  out = np.zeros(shape, bool)
  out[issues.rows, issues.tags] = True
  return out
