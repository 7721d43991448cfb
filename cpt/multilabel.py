"""Multi-label data: label matrices with unknown entries, read from wide or long CSV files.

A target matrix holds 1 (positive), 0 (negative) or -1 (unknown) per (image, class); unknown
entries never count in training losses or in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cpt.data import IMAGE_EXTENSIONS, Skipped
from cpt.errors import CptError

UNKNOWN = -1


@dataclass
class LabelSet:
    """Images and their (n, n_classes) targets in {1, 0, -1}."""

    paths: list[Path]
    targets: np.ndarray


@dataclass
class MultiLabelTask:
    name: str
    classnames: list[str]
    splits: dict[str, LabelSet]  # "train" and "test"
    source: str
    title: str


def _wide(frame: pd.DataFrame, path: Path, classes: list[str] | None) -> tuple[list[str], np.ndarray]:
    """`path,<class1>,<class2>,...`: cells 1 / 0 / -1 or blank (unknown)."""
    columns = [c for c in frame.columns if c != "path"]
    if classes is not None and columns != classes:
        missing = sorted(set(classes) - set(columns))
        extra = sorted(set(columns) - set(classes))
        raise CptError(
            f"The label columns of {path} do not match the class list: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}. Every label file of a task must have the same class columns."
        )
    values = frame[columns].apply(pd.to_numeric, errors="coerce").fillna(UNKNOWN).to_numpy()
    if not np.isin(values, (1, 0, UNKNOWN)).all():
        raise CptError(f"{path} has label cells other than 1, 0, -1 or blank.")
    return columns, values


def _long(frame: pd.DataFrame, path: Path, classes: list[str] | None) -> tuple[list[str], np.ndarray]:
    """`path,labels` with `;`-joined positives; every other label is negative."""
    positives = [[c.strip() for c in str(cell).split(";") if c.strip()] for cell in frame["labels"].fillna("")]
    found = sorted({c for row in positives for c in row})
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise CptError(f"{path} uses labels the task's class list does not have: {', '.join(unknown[:10])}.")
    index = {c: i for i, c in enumerate(classes)}
    values = np.zeros((len(frame), len(classes)), dtype=np.int8)
    for r, row in enumerate(positives):
        values[r, [index[c] for c in row]] = 1
    return classes, values


def read_label_csv(path: Path, classes: list[str] | None = None) -> tuple[list[str], LabelSet, list[Skipped]]:
    """A wide (`path,<class>...`) or long (`path,labels`) label CSV, images relative to it.

    Returns the raw class keys (column names or label strings), the label set and skipped rows;
    `classes` fixes the class list (a test file must use the training file's).
    """
    frame = pd.read_csv(path, dtype={"path": str, "labels": str}, keep_default_na=False, na_values=[""])
    if "path" not in frame.columns:
        raise CptError(f"{path} has no 'path' column; a multi-label CSV is path,<class1>,... or path,labels.")
    long = list(frame.columns) == ["path", "labels"]
    columns, values = (_long if long else _wide)(frame, path, classes)
    paths, keep, skipped = [], [], []
    for i, rel in enumerate(frame["path"]):
        image = (path.parent / rel).resolve()
        if image.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(path.stem, str(image), "not an image file"))
        elif not image.exists():
            skipped.append(Skipped(path.stem, str(image), "file not found"))
        else:
            paths.append(image)
            keep.append(i)
    return columns, LabelSet(paths, values[keep].astype(np.int8)), skipped


def load_multilabel_task(name: str, folder: str) -> tuple[MultiLabelTask, list[Skipped]]:
    """A folder holding train.csv and test.csv (wide or long format) with images relative to it."""
    root = Path(folder)
    files = {split: root / f"{split}.csv" for split in ("train", "test")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise CptError(f"Multi-label task {name!r}: {', '.join(missing)} not found (expected train.csv and test.csv).")
    classes, train, skipped = read_label_csv(files["train"])
    _, test, skipped_test = read_label_csv(files["test"], classes)
    classnames = [str(c).replace("_", " ") for c in classes]
    if not len(test.paths):
        raise CptError(f"Multi-label task {name!r} has no readable test image in {files['test']}.")
    return MultiLabelTask(name, classnames, {"train": train, "test": test}, folder, name.replace("_", " ")), skipped + skipped_test


def mask_known(targets: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Keep each (image, label) entry independently with probability `ratio`, the rest unknown (-1)."""
    if not 0 < ratio <= 1:
        raise CptError(f"--known-ratio {ratio} must be in (0, 1].")
    keep = np.random.default_rng([seed, 7]).random(targets.shape) < ratio
    return np.where(keep, targets, UNKNOWN).astype(np.int8)
