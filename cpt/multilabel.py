"""Multi-label data: label matrices with unknown entries, read from wide CSV files.

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


def read_wide_csv(path: Path, classnames: list[str] | None = None) -> tuple[list[str], LabelSet, list[Skipped]]:
    """`path,<class1>,<class2>,...` with cells 1 / 0 / -1 or blank (unknown); paths relative to the CSV."""
    frame = pd.read_csv(path, dtype={"path": str})
    if "path" not in frame.columns:
        raise CptError(f"{path} has no 'path' column; a multi-label CSV is path,<class1>,<class2>,...")
    columns = [c for c in frame.columns if c != "path"]
    if classnames is not None and columns != classnames:
        missing = sorted(set(classnames) - set(columns))
        extra = sorted(set(columns) - set(classnames))
        raise CptError(
            f"The label columns of {path} do not match the class list: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}. Every label file of a task must have the same class columns."
        )
    values = frame[columns].apply(pd.to_numeric, errors="coerce").fillna(UNKNOWN).to_numpy()
    if not np.isin(values, (1, 0, UNKNOWN)).all():
        raise CptError(f"{path} has label cells other than 1, 0, -1 or blank.")
    root = path.parent
    paths, keep, skipped = [], [], []
    for i, rel in enumerate(frame["path"]):
        image = (root / rel).resolve()
        if image.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(path.stem, str(image), "not an image file"))
        elif not image.exists():
            skipped.append(Skipped(path.stem, str(image), "file not found"))
        else:
            paths.append(image)
            keep.append(i)
    return [str(c).replace("_", " ") for c in columns], LabelSet(paths, values[keep].astype(np.int8)), skipped


def load_multilabel_task(name: str, folder: str) -> tuple[MultiLabelTask, list[Skipped]]:
    """A folder holding train.csv and test.csv (wide format) with images relative to it."""
    root = Path(folder)
    files = {split: root / f"{split}.csv" for split in ("train", "test")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise CptError(f"Multi-label task {name!r}: {', '.join(missing)} not found (expected train.csv and test.csv).")
    classnames, train, skipped = read_wide_csv(files["train"])
    raw_columns = list(pd.read_csv(files["train"], nrows=0).columns.drop("path"))
    _, test, skipped_test = read_wide_csv(files["test"], raw_columns)
    if not len(test.paths):
        raise CptError(f"Multi-label task {name!r} has no readable test image in {files['test']}.")
    return MultiLabelTask(name, classnames, {"train": train, "test": test}, folder, name.replace("_", " ")), skipped + skipped_test
