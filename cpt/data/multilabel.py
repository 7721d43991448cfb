"""Multi-label tasks: train and test label sets read from label files (see cpt.data.label_formats).

A target matrix holds 1 (positive), 0 (negative) or -1 (unknown) per (image, class); unknown
entries never count in training losses or in evaluation. An image a label file lists twice is
kept once (with a warning) when both rows agree, and refused when they do not; test images that
are also training images are reported, since their scores are not held out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpt.data.tasks import Skipped
from cpt.errors import CptError
from cpt.data.label_formats import UNKNOWN, LabelSet, read_label_csv, read_labels

log = logging.getLogger("cpt")
__all__ = [
    "UNKNOWN", "LabelSet", "LabelSource", "MultiLabelTask", "load_multilabel_task", "load_source",
    "read_label_csv", "read_labels", "split_labels",
]


@dataclass(frozen=True)
class LabelSource:
    """Where a multi-label task's labels come from; recorded in the run so `cpt eval` reloads them."""

    labels: str  # label file: CSV (wide or long), COCO instances JSON, VOC folder or VOC image-set list
    test_labels: str | None = None  # None: a seeded split of `labels` (test_fraction of the images)
    images: str | None = None  # image root of both files; default: the CSV's folder, per format otherwise
    unknown_value: int = -1  # wide CSV: the cell meaning "unknown" (-1, blank; or 0, with -1 negative)
    test_fraction: float = 0.3
    seed: int = 0  # of the train/test split when there is no test_labels, and of the validation split
    val_ratio: float = 0.0  # share of the training images held out as a validation split (0: none)

    @classmethod
    def folder(cls, path: str) -> LabelSource:
        """A folder holding train.csv and test.csv."""
        return cls(str(Path(path) / "train.csv"), str(Path(path) / "test.csv"))


@dataclass
class MultiLabelTask:
    name: str
    classnames: list[str]
    splits: dict[str, LabelSet]  # "train" and "test", and "val" when some training images are held out
    source: str
    title: str

    def paths(self, split: str) -> list[Path]:
        """The images of `split` (none for a split the task does not have)."""
        return list(self.splits[split].paths) if split in self.splits else []

    def targets(self, split: str) -> np.ndarray:
        """The (n, n_classes) targets of `split` in {1, 0, -1}."""
        labels = self.splits.get(split)
        return labels.targets if labels is not None else np.zeros((0, len(self.classnames)), dtype=np.int8)


def _subset(labels: LabelSet, rows: np.ndarray) -> LabelSet:
    return LabelSet([labels.paths[i] for i in rows], labels.targets[rows])


def split_labels(labels: LabelSet, test_fraction: float, seed: int, stream: int = 11) -> tuple[LabelSet, LabelSet]:
    """(kept, held out): a seeded random `test_fraction` of the images (rounded, at least 1) held
    out; `stream` tells apart the draws of different splits under one seed."""
    n = len(labels.paths)
    order = np.random.default_rng([seed, stream]).permutation(n)
    n_test = max(1, round(test_fraction * n))
    return _subset(labels, np.sort(order[n_test:])), _subset(labels, np.sort(order[:n_test]))


def once_per_image(labels: LabelSet, file: str) -> LabelSet:
    """`labels` with each image once: repeats with the same targets dropped (with a warning),
    repeats with other targets refused (which row is right is the user's call)."""
    first: dict[Path, int] = {}
    keep, repeats = [], []
    for i, path in enumerate(labels.paths):
        j = first.setdefault(path, i)
        if j == i:
            keep.append(i)
        elif np.array_equal(labels.targets[i], labels.targets[j]):
            repeats.append(path)
        else:
            raise CptError(
                f"The label file {file} lists the image {path} twice, with different labels. Keep one row per image "
                "(merge the two rows' labels into one)."
            )
    if not repeats:
        return labels
    log.warning("%s lists %d image(s) more than once with the same labels (e.g. %s); each is used once",
                file, len(repeats), repeats[0])
    return _subset(labels, np.array(keep, dtype=np.int64))


def load_source(name: str, source: LabelSource) -> tuple[MultiLabelTask, list[Skipped]]:
    """The task `source` describes: its test file's labels, or a seeded split of the training file's."""
    images = Path(source.images) if source.images else None
    classes, train, skipped = read_labels(Path(source.labels), None, images, source.unknown_value)
    train = once_per_image(train, source.labels)
    if source.test_labels:
        _, test, skipped_test = read_labels(Path(source.test_labels), classes, images, source.unknown_value)
        test = once_per_image(test, source.test_labels)
        skipped = skipped + skipped_test
        shared = sorted(set(train.paths) & set(test.paths))
        if shared:
            log.warning("multi-label task %r: %d of its %d test images are also training images (e.g. %s): their "
                        "scores are not a held-out measurement", name, len(shared), len(test.paths), shared[0])
    else:
        train, test = split_labels(train, source.test_fraction, source.seed)
    splits = {"train": train, "test": test}
    if source.val_ratio > 0 and len(train.paths) > 1:  # validation images come from the training images only
        splits["train"], splits["val"] = split_labels(train, source.val_ratio, source.seed, stream=17)
    for split, labels in splits.items():
        if not labels.paths:
            raise CptError(
                f"Multi-label task {name!r} has no readable {split} image (labels: {source.labels}, test labels: "
                f"{source.test_labels or f'a {source.test_fraction:g} split'}). Check the image paths, or give "
                "more images or another test fraction."
            )
    classnames = [str(c).replace("_", " ") for c in classes]
    task = MultiLabelTask(name, classnames, splits, source.labels, name.replace("_", " "))
    return task, skipped


def load_multilabel_task(name: str, folder: str) -> tuple[MultiLabelTask, list[Skipped]]:
    """A folder holding train.csv and test.csv (wide or long format) with images relative to it."""
    return load_source(name, LabelSource.folder(folder))
