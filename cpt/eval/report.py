"""The human report: report.md with a headline table, per-task details and PNG plots.

Task and class names are the user's text: they become file names only through
`cpt.data.names.safe_name`, and plots draw them as plain text (never as math or LaTeX).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve

from cpt.data.names import safe_name  # noqa: F401 (also imported from here)
from cpt.io import atomic_path, write_text
from cpt.eval.metrics import TaskPredictions, average_precisions, confusion

HEADLINE = {"accuracy": "accuracy", "mean_per_class_accuracy": "mean per-class acc.", "macro_f1": "macro-F1"}


# the report's plots draw every text as it is: a name like "$\\foo$" or "50%_{x}$" is a name, not math
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def plain_text(plot):
    """Run a plot function (figure creation to saving) with PLAIN_TEXT settings."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with plt.rc_context(PLAIN_TEXT):
            return plot(*args, **kwargs)
    return wrapper


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write a figure as PNG atomically and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


@plain_text
def plot_confusion(preds: TaskPredictions, path: Path) -> None:
    """Confusion matrix heat map; counts written in cells up to 20 classes, names up to 40."""
    matrix = confusion(preds)
    n = len(preds.classnames)
    side = min(3 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), preds.classnames, rotation=90)
        ax.set_yticks(range(n), preds.classnames)
    if n <= 20:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{preds.task}: confusion matrix")
    save_figure(fig, path)


@plain_text
def plot_class_bars(per_class: pd.DataFrame, task: str, column: str, label: str, path: Path) -> None:
    """Horizontal bars of a per-class percentage (accuracy, AP), best at the top."""
    rows = per_class[per_class.task == task].dropna(subset=[column]).sort_values(column)
    fig, ax = plt.subplots(figsize=(6, min(1 + 0.25 * len(rows), 30)))
    ax.barh(rows["class"].astype(str), rows[column], color="tab:blue")
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{label} (%)")
    ax.set_title(f"{task}: per-class {label}")
    save_figure(fig, path)


@dataclass
class PRCurve:
    """One class's precision-recall curve over its known entries."""

    name: str
    ap: float  # percent
    precision: np.ndarray
    recall: np.ndarray


def pr_curves(classnames: list[str], scores: np.ndarray, targets: np.ndarray, n: int = 3) -> list[PRCurve]:
    """Curves of the `n` best and `n` worst classes by AP (all, if at most 2n), best first, over known entries
    (targets != -1); classes without a known positive have no curve."""
    ap = average_precisions(scores, targets)
    ranked = [int(c) for c in np.argsort(-ap, kind="stable") if np.isfinite(ap[c])]
    chosen = ranked if len(ranked) <= 2 * n else ranked[:n] + ranked[-n:]
    curves = []
    for c in chosen:
        known = targets[:, c] >= 0
        precision, recall, _ = precision_recall_curve(targets[known, c], scores[known, c])
        curves.append(PRCurve(classnames[c], 100.0 * float(ap[c]), precision, recall))
    return curves


@plain_text
def plot_pr_curves(curves: list[PRCurve], task: str, path: Path) -> None:
    """Precision against recall, one line per class, legend with class name and AP."""
    fig, ax = plt.subplots(figsize=(6, 5))
    lines = [ax.step(curve.recall, curve.precision, where="post")[0] for curve in curves]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{task}: best and worst classes by AP")
    if curves:
        # labels passed explicitly: matplotlib would leave out a name starting with "_"
        ax.legend(lines, [f"{c.name} (AP {c.ap:.1f})" for c in curves], fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1))
    save_figure(fig, path)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table."""
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    body = "".join(
        "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |\n"
        for row in frame.itertuples(index=False)
    )
    return head + body


def write_single_label_report(
    out_dir: Path,
    title: str,
    all_preds: list[TaskPredictions],
    metrics: pd.DataFrame,
    per_class: pd.DataFrame,
    details: dict[str, str],
) -> Path:
    """report.md plus confusion_<task>.png and per_class_<task>.png for every task; returns report.md."""
    out_dir = Path(out_dir)
    wide = metrics.pivot_table(index="task", columns="metric", values="value", sort=False)
    headline = wide[list(HEADLINE)].rename(columns=HEADLINE).reset_index()
    lines = [f"# {title}", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in details.items()]
    lines += ["", "## Results (percent)", "", markdown_table(headline)]
    for preds in all_preds:
        stem = safe_name(preds.task)
        plot_confusion(preds, out_dir / f"confusion_{stem}.png")
        plot_class_bars(per_class, preds.task, "accuracy", "accuracy", out_dir / f"per_class_{stem}.png")
        worst = per_class[per_class.task == preds.task].dropna(subset=["accuracy"]).nsmallest(5, "accuracy")
        lines += [
            f"## {preds.task}",
            "",
            f"{len(preds.y_true)} images, {len(preds.classnames)} classes. Weakest classes:",
            "",
            markdown_table(worst[["class", "accuracy", "support"]]),
            f"![confusion matrix](confusion_{stem}.png)",
            "",
            f"![per-class accuracy](per_class_{stem}.png)",
            "",
        ]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path


def write_multilabel_report(out_dir: Path, title: str, metrics: pd.DataFrame, per_class: pd.DataFrame,
                            scores: dict[str, tuple[np.ndarray, np.ndarray]], details: dict[str, str]) -> Path:
    """report.md with mAP per task, classes left out of the mean, per-class AP bars (ap_<task>.png) and
    precision-recall curves of the best and worst classes (pr_<task>.png) from each task's (scores, targets)."""
    out_dir = Path(out_dir)
    wide = metrics.pivot_table(index="task", columns="metric", values="value", sort=False).reset_index()
    lines = [f"# {title}", "", "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in details.items())]
    lines += ["", "## Results (percent)", "", markdown_table(wide)]
    for task in wide["task"]:
        rows = per_class[per_class.task == task]
        stem = safe_name(task)
        plot_class_bars(per_class, task, "ap", "average precision", out_dir / f"ap_{stem}.png")
        plot_pr_curves(pr_curves(rows["class"].astype(str).tolist(), *scores[task]), task, out_dir / f"pr_{stem}.png")
        excluded = rows[rows.ap.isna()]["class"].tolist()
        lines += [f"## {task}", "", f"Classes without a known positive (left out of mAP): {', '.join(excluded) or 'none'}.", "",
                  _conventions(wide[wide.task == task].iloc[0], len(excluded)), "",
                  markdown_table(rows.sort_values("ap")[["class", "ap", "positives", "support"]].head(5)),
                  f"![per-class AP](ap_{stem}.png)", "",
                  f"![precision-recall curves of the best and worst classes](pr_{stem}.png)", ""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path



def _conventions(row: pd.Series, positive_less: int) -> str:
    """One sentence naming the two mAP conventions of a task and what separates them."""
    return (f"mAP {row['mAP']:.2f} is cpt's: over known entries and classes with a known positive. mAP_paper "
            f"{row['mAP_paper']:.2f} is the papers' (ASL, SCPNet evaluation code), for comparing with published tables: "
            f"it counts the unknown entries ({int(row['n_unknown_entries'])}) as negatives and the classes without a "
            f"positive ({positive_less}) as AP 0, and breaks ties in row order.")


# per sweep / comparison axis: the plot's file name, x label and y label
AXIS_PLOTS = {
    "shots": ("accuracy_vs_shots.png", "shots per class", "mean headline accuracy (%)"),
    "known_ratio": ("map_vs_known_ratio.png", "known label ratio", "mAP (%)"),
    "frames": ("rsum_vs_frames.png", "frames per video", "RSum (t2v + v2t R@1, R@5, R@10)"),
}


@plain_text
def plot_against(frame: pd.DataFrame, axis: str, path: Path) -> None:
    """`value` against `axis`, one line per `label`: mean over rows (seeds), std as error bars."""
    _, x_label, y_label = AXIS_PLOTS[axis]
    fig, ax = plt.subplots(figsize=(6, 4))
    lines, labels = [], []
    for label, rows in frame.groupby("label", sort=False):
        stats = rows.groupby(axis)["value"].agg(["mean", "std"]).fillna({"std": 0.0})
        lines.append(ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3))
        labels.append(str(label))
    if axis == "shots":
        ax.set_xscale("log", base=2)
        ticks = sorted(frame[axis].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(f"{y_label} against {x_label} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(lines, labels, fontsize=8)
    save_figure(fig, path)


def write_comparison_report(out_dir: Path, title: str, comparison: pd.DataFrame, axes: dict[str, str]) -> Path:
    """report.md (each label's headline metric per setting and task: mean, std, runs) and, per
    task kind, its metric against its axis (`axes`: kind -> axis; each run averaged over its tasks);
    returns report.md."""
    out_dir = Path(out_dir)
    lines = [f"# {title}", "", f"{comparison.run.nunique()} runs; metrics in percent (RSum: a sum of three), mean and "
             "std over seeds.", ""]
    for axis, rows in comparison.groupby(comparison.kind.map(axes), sort=False):
        per_run = rows.groupby(["run", "label", axis], as_index=False, sort=False)["value"].mean()
        file = AXIS_PLOTS[axis][0]
        plot_against(per_run, axis, out_dir / file)
        summary = (rows.groupby(["label", axis, "task", "metric"])["value"]
                   .agg(value="mean", std="std", runs="count").reset_index())
        lines += [markdown_table(summary), f"![{AXIS_PLOTS[axis][2]} against {AXIS_PLOTS[axis][1]}]({file})", ""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
