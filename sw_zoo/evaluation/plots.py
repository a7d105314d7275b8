"""PNG plots of an evaluation: precision-recall curves, F1 against threshold, per-tag F1 against
tag frequency. Built on matplotlib's Figure directly (Agg canvas), so no display, no pyplot
global state, and nothing changes for a caller that uses pyplot itself."""
from __future__ import annotations

import os

from matplotlib.figure import Figure

from sw_zoo.data.vocab import TagVocab
from sw_zoo.evaluation.report import ALL, Report, category_groups

PLOT_FILES = ("pr_curve.png", "f1_vs_threshold.png", "tag_f1_vs_frequency.png")


def _save(fig: Figure, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def pr_curves(report: Report, path: str) -> None:
  fig = Figure(figsize=(6.5, 5.5))
  ax = fig.add_subplot()
  for name, curve in report.curves.items():
    defined = curve.tp + curve.fp > 0
    if not defined.any() or report.categories[name]["tags_evaluated"] == 0:
      continue
    (line,) = ax.plot(curve.recall[defined], curve.precision[defined], lw=2.2 if name == ALL else 1.3, label=name)
    entry = report.categories[name]
    ax.plot(entry["p_eq_r_recall"], entry["p_eq_r_precision"], "o", color=line.get_color(), ms=5)
    ax.plot(entry["best_recall"], entry["best_precision"], "*", color=line.get_color(), ms=9)
  ax.set(xlabel="recall (micro)", ylabel="precision (micro)", xlim=(0, 1), ylim=(0, 1.02),
         title="Precision-recall per category (o: P=R, *: best F1)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left", fontsize=8)
  _save(fig, path)


def f1_vs_threshold(report: Report, path: str, *, threshold: float) -> None:
  fig = Figure(figsize=(6.5, 5.0))
  ax = fig.add_subplot()
  for name, curve in report.curves.items():
    if report.categories[name]["tags_evaluated"] == 0:
      continue
    (line,) = ax.plot(curve.thresholds, curve.f1, lw=2.2 if name == ALL else 1.3, label=f"{name} micro")
    if name == ALL:
      ax.plot(curve.thresholds, report.macro_curves[name], "--", color=line.get_color(), lw=1.3, label="all macro")
    ax.plot(report.categories[name]["best_threshold"], report.categories[name]["best_f1"], "*",
            color=line.get_color(), ms=9)
  ax.axvline(threshold, color="grey", lw=0.8, ls=":", label=f"eval threshold {threshold:g}")
  ax.set(xlabel="threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02), title="F1 against threshold (*: best)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)


def tag_f1_vs_frequency(report: Report, tags: TagVocab, path: str, *, threshold: float) -> None:
  fig = Figure(figsize=(6.5, 5.0))
  ax = fig.add_subplot()
  support, f1 = report.per_tag["support"], report.per_tag["f1"]
  # Colour n is the n-th category group, as in the curve plots ('all' took C0 there); earlier
  # groups (rating before the many general tags) are drawn on top.
  groups = category_groups(tags)[1:]
  for n, (name, index) in enumerate(groups, start=1):
    index = index[support[index] > 0]
    if len(index):
      ax.scatter(support[index], f1[index], s=8, alpha=0.6, color=f"C{n}", label=name, zorder=2 + len(groups) - n)
  ax.set_xscale("log")
  ax.set(xlabel="positives in the evaluated split", ylabel=f"F1 at threshold {threshold:g}", ylim=(-0.02, 1.02),
         title="Per-tag F1 against tag frequency")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, markerscale=2)
  _save(fig, path)


def write_all(report: Report, tags: TagVocab, out_dir: str, *, threshold: float) -> list[str]:
  paths = [os.path.join(out_dir, name) for name in PLOT_FILES]
  pr_curves(report, paths[0])
  f1_vs_threshold(report, paths[1], threshold=threshold)
  tag_f1_vs_frequency(report, tags, paths[2], threshold=threshold)
  return paths
