"""Multi-label recognition with partial labels: label files, the known-entry protocol, the
asymmetric loss over known entries, mAP and CP/CR/CF1/OP/OR/OF1, PR curves, thresholded predictions.

Label sources (a folder with train.csv/test.csv, or --labels/--images/--test-labels) are read
before the run directory exists. The partial-label protocol (a saved mask, one positive per
image, or --known-ratio under the seed) decides what training sees; the run keeps the mask
(mask_<task>.csv) and the targets it trained on (train_labels_<task>.csv), <task> being the task
name as a file name (cpt.data.names.safe_name).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from cpt.data.names import check_task_names, safe_name
from cpt.data.multilabel import UNKNOWN, LabelSource, MultiLabelTask, load_source
from cpt.data.partial import mask_frame, partial_targets, read_mask
from cpt.data.taskfile import TaskSpec
from cpt.data.tasks import Skipped
from cpt.errors import CptError
from cpt.eval.metrics import TaskPredictions, average_precisions, multilabel_frames
from cpt.eval.report import write_multilabel_report
from cpt.io import write_csv
from cpt.kinds.base import Evaluation, TaskKind, val_ratio_option
from cpt.methods.losses import asymmetric_loss
from cpt.options import Options, option

PANEL = "Multi-label data and partial labels"


@dataclass
class MultiLabelOptions(Options):
    labels: str | None = option(None, "Multi-label label file instead of --tasks: a wide CSV path,<class>... (1/0/-1 or "
                                "blank), a long CSV path,labels (';'-joined positives), a COCO instances_*.json, a VOC "
                                "folder or ImageSets/Main/<split>.txt. --tasks then only names the task.", panel=PANEL)
    images: str | None = option(None, "Image root of --labels [default: the CSV's folder; COCO: ../<split> beside "
                                "annotations/; VOC: JPEGImages].", panel=PANEL)
    test_labels: str | None = option(None, "Test label file (same format and classes) [default: 30% of --labels, split "
                                     "by --seed].", panel=PANEL)
    unknown_value: int = option(-1, "Wide CSV: the cell value meaning unknown: -1 (then 0 is negative) or 0 (then -1 is "
                                "negative).", panel=PANEL, low=-1, high=0)
    known_ratio: float = option(1.0, "Keep each training (image, label) entry known with this probability (under "
                                "--seed); the mask is saved in the run.", panel=PANEL, low=0, high=1, above=True)
    mask: str | None = option(None, "Reuse a saved mask_<task>.csv (1 known, 0 hidden) instead of drawing one.",
                              panel=PANEL)
    single_positive: bool = option(False, "Keep one positive label per training image, every other entry unknown.",
                                   panel=PANEL)
    val_ratio: float = val_ratio_option(0.0, PANEL)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask and (self.single_positive or self.known_ratio < 1):
            raise CptError("--mask replaces --known-ratio and --single-positive; give only one of them.")


class MultiLabel(TaskKind):
    name = "multi-label"
    Options = MultiLabelOptions
    axis = "known_ratio"
    headline = "mAP"
    excludes = {"class_sample_rate": "it samples classes by the batch's labels: single-label tasks only"}
    alternatives = (frozenset({"mask", "known_ratio", "single_positive"}),)  # the partial-label protocol
    val_hint = ("Hold out some training images for it with --val-ratio (e.g. 0.1); the test split is never used to "
                "choose.")

    def load(self, specs: list[TaskSpec], opts: MultiLabelOptions, seed: int) -> tuple[list[MultiLabelTask], list[Skipped]]:
        if opts.mask and len(specs) != 1:
            raise CptError("--mask holds the mask of one task; run the tasks separately.")
        check_task_names([s.name for s in specs], "--tasks (or, without it, the --labels file's name)")
        tasks, skipped = [], []
        for spec in specs:
            task, skip = load_source(spec.name, self._source(spec, opts, seed))
            if opts.mask:  # read now, so a mask that does not fit is refused before the run folder exists
                read_mask(Path(opts.mask), self._labelled(task)[0], task.classnames)
            tasks.append(task)
            skipped += skip
        return tasks, skipped

    @staticmethod
    def _source(spec: TaskSpec, opts: MultiLabelOptions, seed: int) -> LabelSource:
        if opts.labels:
            return LabelSource(opts.labels, opts.test_labels, opts.images, opts.unknown_value, seed=seed,
                               val_ratio=opts.val_ratio)
        return replace(LabelSource.folder(spec.path), seed=seed, val_ratio=opts.val_ratio)

    def record(self, task: MultiLabelTask, spec: TaskSpec | None, opts: MultiLabelOptions, seed: int) -> dict:
        return {"name": task.name, "title": task.title, "source": task.source, "classnames": task.classnames,
                "label_source": asdict(self._source(spec, opts, seed))}

    def save(self, run: Path, tasks: list[MultiLabelTask], failed: dict[str, str]) -> None:
        """Nothing more: the label source is recorded and the masks are written with the targets."""

    def restore(self, run: Path, recorded: list[dict]) -> list[MultiLabelTask]:
        return [load_source(r["name"], LabelSource(**r["label_source"]))[0] for r in recorded]

    @staticmethod
    def _labelled(task: MultiLabelTask) -> tuple[list[str], np.ndarray]:
        """Paths and labels of the labelled training images: the training split, then the validation one."""
        parts = [task.splits[s] for s in ("train", "val") if s in task.splits]
        return [str(p) for part in parts for p in part.paths], np.concatenate([part.targets for part in parts])

    def _partial(self, task: MultiLabelTask, opts: MultiLabelOptions, seed: int) -> tuple[list[str], np.ndarray]:
        """The labelled training images and what the partial-label protocol lets the run see of them."""
        paths, labels = self._labelled(task)
        known = read_mask(Path(opts.mask), paths, task.classnames) if opts.mask else None
        return paths, partial_targets(labels, opts.known_ratio, seed, opts.single_positive, known).astype(np.int64)

    def train_targets(self, task: MultiLabelTask, opts: MultiLabelOptions, seed: int, run: Path) -> np.ndarray:
        """The training split's partial labels; the run keeps the mask of every labelled training image
        (validation ones included) and the labels of each split it trained or selected on."""
        paths, targets = self._partial(task, opts, seed)
        n = len(task.splits["train"].paths)
        stem = safe_name(task.name)
        write_csv(run / f"mask_{stem}.csv", mask_frame(paths, task.classnames, targets != UNKNOWN))
        write_csv(run / f"train_labels_{stem}.csv", mask_frame(paths[:n], task.classnames, targets[:n]))
        if len(paths) > n:
            write_csv(run / f"val_labels_{stem}.csv", mask_frame(paths[n:], task.classnames, targets[n:]))
        return targets[:n]

    def val_targets(self, task: MultiLabelTask, opts: MultiLabelOptions, seed: int) -> np.ndarray:
        """The held-out images' partial labels: the user has no others, so selection sees no others."""
        return self._partial(task, opts, seed)[1][len(task.splits["train"].paths):]

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return asymmetric_loss(logits, targets)

    def evaluate(self, scored: list[TaskPredictions], split: str, headline: dict[str, str] | None = None) -> Evaluation:
        frames = [multilabel_frames(p.task, p.classnames, p.logits, p.y_true, split) for p in scored]
        return Evaluation(pd.concat([m for m, _ in frames], ignore_index=True),
                          pd.concat([pc for _, pc in frames], ignore_index=True), scored)

    def selection_score(self, scored: list[TaskPredictions], headline: dict[str, str]) -> float:
        """mAP over the known validation entries. Single positive labels know no negative (every AP
        would be 1): there unknown entries count as negatives, as SPLC trains on them."""
        maps = []
        for p in scored:
            targets = p.y_true if (p.y_true == 0).any() else (p.y_true == 1).astype(np.int64)
            ap = average_precisions(p.logits, targets)
            maps.append(float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0)
        return 100.0 * float(np.mean(maps))

    def write(self, out: Path, title: str, evaluation: Evaluation, details: dict[str, str]) -> None:
        write_csv(out / "metrics.csv", evaluation.metrics)
        write_csv(out / "per_class.csv", evaluation.per_class)
        scores = {p.task: (p.logits, p.y_true) for p in evaluation.scored}
        write_multilabel_report(out, title, evaluation.metrics, evaluation.per_class, scores, details)

    def decode(self, logits: Tensor, top_k: int, threshold: float) -> tuple[list[int], list[float]]:
        probs = torch.sigmoid(logits)
        chosen = [i for i in probs.argsort(descending=True, stable=True).tolist() if probs[i] >= threshold]
        return chosen, [float(probs[i]) for i in chosen]
