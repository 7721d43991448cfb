"""Classification metrics in percent, computed by scikit-learn: single-label accuracy / F1 and multi-label mAP."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)


@dataclass
class TaskPredictions:
    """One task's evaluated images: their targets in the kind's shape and their logits."""

    task: str
    classnames: list[str]
    y_true: np.ndarray  # (n,) int labels (single-label) or (n, n_classes) targets in {1, 0, -1}
    logits: np.ndarray  # (n, n_classes)
    paths: list[str]

    @property
    def y_pred(self) -> np.ndarray:
        return self.logits.argmax(axis=1)  # ties: the first class

    @property
    def labels(self) -> np.ndarray:
        return np.arange(len(self.classnames))


def confusion(preds: TaskPredictions) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predictions."""
    return confusion_matrix(preds.y_true, preds.y_pred, labels=preds.labels)


def single_label_metrics(preds: TaskPredictions) -> dict[str, float]:
    """accuracy, mean per-class accuracy (classes with support), macro-F1, top-5 (>5 classes), n_images."""
    matrix = confusion(preds)
    support = matrix.sum(axis=1)
    present = support > 0
    out = {
        "accuracy": 100.0 * float(np.mean(preds.y_pred == preds.y_true)),
        "mean_per_class_accuracy": 100.0 * float(np.mean(np.diag(matrix)[present] / support[present])),
        "macro_f1": 100.0 * float(f1_score(preds.y_true, preds.y_pred, average="macro", zero_division=0)),
    }
    if len(preds.classnames) > 5:
        out["top5_accuracy"] = 100.0 * float(
            top_k_accuracy_score(preds.y_true, preds.logits, k=5, labels=preds.labels)
        )
    out["n_images"] = float(len(preds.y_true))
    return out


def per_class_frame(preds: TaskPredictions) -> pd.DataFrame:
    """One row per class, in class order: task, class, accuracy, precision, recall, f1 (percent), support.

    Undefined values are NaN rather than 0: accuracy and recall without support, precision for a
    class never predicted, F1 for a class neither present nor predicted (the classes macro-F1 skips).
    """
    precision, recall, f1, support = precision_recall_fscore_support(
        preds.y_true, preds.y_pred, labels=preds.labels, zero_division=np.nan
    )
    return pd.DataFrame(
        {
            "task": preds.task,
            "class": preds.classnames,
            "accuracy": 100.0 * recall,
            "precision": 100.0 * precision,
            "recall": 100.0 * recall,
            "f1": 100.0 * f1,
            "support": support,
        }
    )


def metrics_frame(all_preds: list[TaskPredictions], split: str, headline: dict[str, str] | None = None) -> pd.DataFrame:
    """Tidy rows (task, split, metric, value); with several tasks also their unweighted mean."""
    rows = []
    for p in all_preds:
        values = single_label_metrics(p)
        rows += [(p.task, split, k, v) for k, v in values.items()]
        if headline:  # the metric the task is reported by (e.g. mean per-class accuracy for some datasets)
            rows.append((p.task, split, "headline", values[headline.get(p.task, "accuracy")]))
    frame = pd.DataFrame(rows, columns=["task", "split", "metric", "value"])
    if len(all_preds) > 1:
        mean = frame.groupby("metric", sort=False)["value"].mean()
        mean["n_images"] = frame.loc[frame.metric == "n_images", "value"].sum()
        frame = pd.concat(
            [frame, pd.DataFrame({"task": "mean", "split": split, "metric": mean.index, "value": mean.values})],
            ignore_index=True,
        )
    return frame


def predictions_frame(preds: TaskPredictions) -> pd.DataFrame:
    """One row per image: task, path, label, prediction, correct, score (softmax probability)."""
    probs = torch.softmax(torch.as_tensor(preds.logits, dtype=torch.float64), dim=1).numpy()
    names = np.array(preds.classnames)
    return pd.DataFrame(
        {
            "task": preds.task,
            "path": preds.paths,
            "label": names[preds.y_true],
            "prediction": names[preds.y_pred],
            "correct": preds.y_pred == preds.y_true,
            "score": probs[np.arange(len(probs)), preds.y_pred],
        }
    )


def average_precisions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class non-interpolated AP (sklearn) over known entries; NaN for classes without a positive."""
    out = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        known = targets[:, c] >= 0
        y = targets[known, c]
        if y.any():
            out[c] = average_precision_score(y, scores[known, c])
    return out


def paper_average_precisions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP as the papers' evaluation code computes it (ASL, SCPNet): unknown entries
    count as negatives, a class without a positive scores 0, and images are ranked by
    reversing numpy's default argsort, so ties fall in that order rather than all at once."""
    out = np.zeros(targets.shape[1])
    for c in range(targets.shape[1]):
        hits = targets[np.argsort(scores[:, c])[::-1], c] == 1
        if hits.any():
            out[c] = float(np.mean(np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)))
    return out


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(np.asarray(num, dtype=float)), where=np.asarray(den) > 0)


def precision_recall_f1(predicted: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """CP, CR, CF1 (per-class, averaged) and OP, OR, OF1 (overall) in percent, over known entries only.

    `predicted` is a 0/1 matrix; entries whose target is unknown (-1) count nowhere. A class
    never predicted has precision 0, as the multi-label literature (ML-GCN, ASL) computes it.
    """
    known = targets >= 0
    tp = ((predicted == 1) & (targets == 1) & known).sum(axis=0)
    n_pred = ((predicted == 1) & known).sum(axis=0)
    n_pos = ((targets == 1) & known).sum(axis=0)
    cp, cr = float(_ratio(tp, n_pred).mean()), float(_ratio(tp, n_pos).mean())
    op, orr = float(_ratio(tp.sum(), n_pred.sum())), float(_ratio(tp.sum(), n_pos.sum()))
    f1 = lambda p, r: float(_ratio(2 * p * r, p + r))  # noqa: E731
    return {k: 100.0 * v for k, v in
            {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orr, "OF1": f1(op, orr)}.items()}


def multilabel_frames(task: str, classnames: list[str], scores: np.ndarray, targets: np.ndarray, split: str,
                      threshold: float = 0.5, k: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics rows: mAP, mAP_paper, CP/CR/CF1/OP/OR/OF1 at sigmoid >= threshold and at top-k,
    n_images, n_classes_evaluated, n_unknown_entries; per-class rows: ap, positives, support)."""
    ap = average_precisions(scores, targets)
    at_threshold = (1 / (1 + np.exp(-scores)) >= threshold).astype(int)
    top = np.zeros_like(at_threshold)
    np.put_along_axis(top, np.argsort(-scores, axis=1, kind="stable")[:, :k], 1, axis=1)
    rows = [(task, split, "mAP", 100.0 * float(np.nanmean(ap)) if np.isfinite(ap).any() else np.nan),
            (task, split, "mAP_paper", 100.0 * float(paper_average_precisions(scores, targets).mean()))]
    rows += [(task, split, name, v) for name, v in precision_recall_f1(at_threshold, targets).items()]
    rows += [(task, split, f"{name}_top{k}", v) for name, v in precision_recall_f1(top, targets).items()]
    rows += [(task, split, "n_images", float(len(targets))), (task, split, "n_classes_evaluated", float(np.isfinite(ap).sum())),
             (task, split, "n_unknown_entries", float((targets < 0).sum()))]
    metrics = pd.DataFrame(rows, columns=["task", "split", "metric", "value"])
    per_class = pd.DataFrame(
        {"task": task, "class": classnames, "ap": 100.0 * ap,
         "positives": (targets == 1).sum(axis=0), "support": (targets >= 0).sum(axis=0)}
    )
    return metrics, per_class
