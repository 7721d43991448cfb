"""Multi-label evaluation: test-split scores -> mAP, CP/CR/CF1/OP/OR/OF1, per-class AP, report;
and the comparison of several multi-label runs (mAP against the known-label ratio).

Unknown entries are left out of every AP; classes without a known positive are left out of
the mean and counted in `n_classes_evaluated`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cpt.features import FeatureCache
from cpt.io import write_csv
from cpt.methods import Classifier
from cpt.metrics import multilabel_frames
from cpt.multilabel import MultiLabelTask
from cpt.options import run_flags
from cpt.report import write_comparison_report, write_multilabel_report

COMPARISON_COLUMNS = ["run", "label", "method", "known_ratio", "seed", "task", "mAP"]


@dataclass
class MultiLabelEval:
    """A multi-label evaluation: tidy metrics, per-class AP, and each task's (scores, targets) of the test images."""

    metrics: pd.DataFrame
    per_class: pd.DataFrame
    scores: dict[str, tuple[np.ndarray, np.ndarray]]


def evaluate_multilabel(tasks: list[MultiLabelTask], classifiers: list[Classifier],
                        cache: FeatureCache) -> MultiLabelEval:
    """Every task's test split scored and measured, images that fail to decode left out."""
    metrics, per_class, scores = [], [], {}
    for task, classifier in zip(tasks, classifiers):
        test = task.splits["test"]
        feats = cache.features(test.paths, None, f"{task.name}: test")
        keep = cache.readable(test.paths)
        logits, targets = classifier.logits(feats[keep]).numpy(), test.targets[keep.numpy()]
        m, pc = multilabel_frames(task.name, task.classnames, logits, targets, "test")
        metrics.append(m)
        per_class.append(pc)
        scores[task.name] = (logits, targets)
    return MultiLabelEval(pd.concat(metrics, ignore_index=True), pd.concat(per_class, ignore_index=True), scores)


def write_multilabel_results(out: Path, title: str, result: MultiLabelEval, details: dict[str, str]) -> None:
    """metrics.csv, per_class.csv and the mAP report (with PR curves) into `out`."""
    write_csv(out / "metrics.csv", result.metrics)
    write_csv(out / "per_class.csv", result.per_class)
    write_multilabel_report(out, title, result.metrics, result.per_class, result.scores, details)


def run_label(request: dict) -> str:
    """The method, with the run's switched-on ablation flags in parentheses: `coop (no_prior, single_positive)`."""
    flags = run_flags(request)
    return f"{request['method']} ({', '.join(flags)})" if flags else request["method"]


def comparison_rows(run: str, config: dict, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per task of a run: run, label, method, known_ratio, seed, task, mAP."""
    request = config["request"]
    rows = metrics[metrics.metric == "mAP"]
    return pd.DataFrame({
        "run": run, "label": run_label(request), "method": request["method"],
        "known_ratio": float(request.get("known_ratio", 1.0)), "seed": request["seed"],
        "task": rows["task"].to_numpy(), "mAP": rows["value"].to_numpy(),
    }, columns=COMPARISON_COLUMNS)


def write_comparison(out: Path, title: str, comparison: pd.DataFrame) -> None:
    """comparison.csv, report.md and map_vs_known_ratio.png into `out`."""
    write_csv(out / "comparison.csv", comparison)
    write_comparison_report(out, title, comparison)
