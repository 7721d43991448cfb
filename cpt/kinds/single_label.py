"""Single-label classification: one class per image, K shots per class, softmax cross-entropy,
accuracy / mean per-class accuracy / macro-F1 / top-5, confusion matrices, top-k predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from cpt.data import tasks as D
from cpt.data.names import check_task_names
from cpt.data.taskfile import TaskSpec
from cpt.errors import CptError
from cpt.eval.metrics import TaskPredictions, metrics_frame, per_class_frame, predictions_frame, single_label_metrics
from cpt.eval.report import write_single_label_report
from cpt.io import write_csv
from cpt.kinds.base import Evaluation, TaskKind
from cpt.options import Options, option

SPLITS_FILE = "splits.csv"
PANEL = "Single-label data"


@dataclass
class SingleLabelOptions(Options):
    shots: int = option(16, "Training images per class (0 = all).", panel=PANEL, low=0)
    classes: str = option("all", "Which of each task's classes: all; base, the first half of its class order "
                          "(rounded up), or new, the rest (the base-to-new protocol: train on base, then `cpt eval "
                          "RUN --classes new`).", panel=PANEL, choices=D.CLASS_HALVES)


class SingleLabel(TaskKind):
    name = "single-label"
    Options = SingleLabelOptions
    axis = "shots"
    headline = "headline"
    val_hint = ("Give it validation images (a val/ folder, a CSV split column or a split JSON with val; class folders "
                "alone are split 50/20/30), or use --select last.")

    def load(self, specs: list[TaskSpec], opts: SingleLabelOptions, seed: int) -> tuple[list[D.Task], list[D.Skipped]]:
        check_task_names([s.name for s in specs], "The run's task list")
        tasks, skipped = [], []
        for spec in specs:
            task, skip = D.load_spec(spec, seed)
            task, skip2 = D.few_shot(D.class_half(task, opts.classes), opts.shots, seed)
            tasks.append(task)
            skipped += skip + skip2
        return tasks, skipped

    def record(self, task: D.Task, spec: TaskSpec | None, opts: SingleLabelOptions, seed: int) -> dict:
        record = {"name": task.name, "title": task.title, "source": task.source, "classnames": task.classnames,
                  "metric": spec.metric if spec else "accuracy"}
        if opts.classes != "all" and spec is not None:  # what `cpt eval --classes` reloads the other half from
            record["spec"] = {"name": spec.name, "path": spec.path, "classnames": spec.classnames}
        return record

    def other_classes(self, record: dict, half: str, seed: int) -> D.Task:
        """The test split of a base-to-new run's task on its classes `half` (`cpt eval --classes`)."""
        if "spec" not in record:
            raise CptError(f"Task {record['name']!r} of this run was trained on all its classes (--classes all); "
                           "--classes evaluates the other half of a run trained with --classes base.")
        task, skipped = D.load_spec(TaskSpec(**record["spec"]), seed)
        for s in skipped:
            D.log.warning("skipped %s: %s", s.path, s.reason)
        task = D.class_half(task, half)
        return D.Task(task.name, task.classnames, {"train": [], "val": [], "test": task.splits["test"]},
                      task.source, task.title)

    def save(self, run: Path, tasks: list[D.Task], failed: dict[str, str]) -> None:
        kept = [D.Task(t.name, t.classnames, {k: [s for s in v if str(s.path) not in failed] for k, v in t.splits.items()},
                       t.source, t.title) for t in tasks]
        write_csv(run / SPLITS_FILE, D.splits_frame(kept))

    def restore(self, run: Path, recorded: list[dict]) -> list[D.Task] | None:
        if not (run / SPLITS_FILE).exists():  # stopped before sampling was recorded: sample again
            return None
        return D.tasks_from_frame(D.read_splits(run / SPLITS_FILE), recorded)

    def train_targets(self, task: D.Task, opts: SingleLabelOptions, seed: int, run: Path) -> np.ndarray:
        return task.targets("train")

    def check_training(self, task: D.Task, targets: np.ndarray) -> None:
        missing = [name for c, name in enumerate(task.classnames) if c not in set(targets.tolist())]
        if missing:
            raise CptError(
                f"Task {task.name!r}: class {missing[0]!r} has no readable training image left "
                f"(see skipped.csv). Add images to that class or remove its folder."
            )

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="sum")

    def evaluate(self, scored: list[TaskPredictions], split: str, headline: dict[str, str] | None = None) -> Evaluation:
        per_class = pd.concat([per_class_frame(p) for p in scored], ignore_index=True)
        return Evaluation(metrics_frame(scored, split, headline), per_class, scored)

    def selection_score(self, scored: list[TaskPredictions], headline: dict[str, str]) -> float:
        return float(np.mean([single_label_metrics(p)[headline.get(p.task, "accuracy")] for p in scored]))

    def write(self, out: Path, title: str, evaluation: Evaluation, details: dict[str, str]) -> None:
        write_csv(out / "metrics.csv", evaluation.metrics)
        write_csv(out / "per_class.csv", evaluation.per_class)
        write_csv(out / "predictions.csv", pd.concat([predictions_frame(p) for p in evaluation.scored], ignore_index=True))
        write_single_label_report(out, title, evaluation.scored, evaluation.metrics, evaluation.per_class, details)

    def decode(self, logits: Tensor, top_k: int, threshold: float) -> tuple[list[int], list[float]]:
        probs = torch.softmax(logits, dim=0)
        chosen = probs.argsort(descending=True, stable=True)[: min(top_k, len(probs))].tolist()
        return chosen, [float(probs[i]) for i in chosen]

    def external(self, path: str, name: str, seed: int, classnames: list[str] | None) -> D.Task:
        """A folder/CSV/JSON as one evaluation task: its test split, or every image if it has no split;
        with the run's `classnames`, its classes mapped onto the run's."""
        task, skipped = D.load_task(name, path, seed)
        for s in skipped:
            D.log.warning("skipped %s: %s", s.path, s.reason)
        samples = task.splits["test"] if _has_test_split(path) else sorted(
            (s for split in task.splits.values() for s in split), key=lambda s: str(s.path))
        if classnames is not None:
            unknown = [c for c in task.classnames if c not in classnames]
            if unknown:
                raise CptError(
                    f"--data {path} has classes the run was not trained on: {', '.join(unknown[:5])}. "
                    f"The run knows: {', '.join(classnames[:10])}{' ...' if len(classnames) > 10 else ''}."
                )
            remap = [classnames.index(c) for c in task.classnames]
            samples = [D.Sample(s.path, remap[s.label]) for s in samples]
        return D.Task(task.name, classnames or task.classnames, {"train": [], "val": [], "test": samples}, path,
                      task.title)


def _has_test_split(path: str) -> bool:
    """Whether the data declares its test images (test/ folder, CSV split column, split JSON)."""
    p = Path(path.split("@")[0])
    if p.is_dir():
        return (p / "test").is_dir()
    if p.suffix.lower() == ".csv":
        return "split" in pd.read_csv(p, nrows=0).columns
    return True
