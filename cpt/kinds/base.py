"""The task-kind contract: everything that differs between single-label and multi-label tasks
(and, next, text-video retrieval), so fit, evaluate and predict are one pipeline each.

A kind loads and validates its tasks, says what a run must keep to restore them, turns a
task's training split into targets, scores logits with its loss, measures predictions,
writes its CSVs and report sections, and decodes one image's logits into a prediction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd
from torch import Tensor

from cpt.data.taskfile import TaskSpec
from cpt.data.tasks import Skipped
from cpt.errors import CptError
from cpt.eval.metrics import TaskPredictions
from cpt.options import option


def val_ratio_option(default: float, panel: str) -> Any:
    """--val-ratio, one declaration for the kinds that hold out training data for --select val."""
    return option(default, "Hold out this share of the training data (under --seed) as a validation split for "
                  "--select val (0 = none): multi-label images, with the partial labels training would have seen; "
                  "retrieval videos of a source without a split, or of MSR-VTT's 9k.", panel=panel, low=0, high=0.5)


class Task(Protocol):
    """What every kind's task offers the pipeline."""

    name: str
    classnames: list[str]
    source: str
    title: str

    def paths(self, split: str) -> list[Path]: ...

    def targets(self, split: str) -> np.ndarray: ...


@dataclass
class Evaluation:
    """A kind's measurement of scored tasks: tidy metrics and per-class rows, plus what its
    CSVs and report draw on (`scored`)."""

    metrics: pd.DataFrame  # task, split, metric, value
    per_class: pd.DataFrame
    scored: list[TaskPredictions]


class TaskKind(ABC):
    """One kind of task: its options, data, targets, loss, metrics, report and prediction decoding."""

    name: ClassVar[str]
    Options: ClassVar[type]  # its options (a cpt.options dataclass)
    axis: ClassVar[str]  # the option a sweep varies and comparisons plot against
    headline: ClassVar[str]  # the metric runs are compared by
    excludes: ClassVar[dict[str, str]] = {}  # options that do not apply to this kind: name -> why
    # options that make one choice together: one given replaces the presets' values of the others
    alternatives: ClassVar[tuple[frozenset[str], ...]] = ()
    val_hint: ClassVar[str]  # how a task of this kind gets a validation split (for --select val)

    @abstractmethod
    def load(self, specs: list[TaskSpec], opts: Any, seed: int) -> tuple[list[Task], list[Skipped]]:
        """The tasks `specs` name, read and validated (before any run directory exists)."""

    @abstractmethod
    def record(self, task: Task, spec: TaskSpec | None, opts: Any, seed: int) -> dict:
        """What config.json keeps of a task: enough for `restore` with the run's files."""

    @abstractmethod
    def save(self, run: Path, tasks: list[Task], failed: dict[str, str]) -> None:
        """Write the files `restore` needs (images that failed to decode left out)."""

    @abstractmethod
    def restore(self, run: Path, recorded: list[dict]) -> list[Task] | None:
        """The run's tasks again, from config.json's records and the run's files (None: the run
        stopped before it recorded them; load them anew)."""

    @abstractmethod
    def train_targets(self, task: Task, opts: Any, seed: int, run: Path) -> np.ndarray:
        """The targets training sees for the task's train split (written into the run as needed)."""

    def val_targets(self, task: Task, opts: Any, seed: int) -> np.ndarray:
        """The targets of the task's validation split as the run may see them (default: its labels)."""
        return task.targets("val")

    def check_training(self, task: Task, targets: np.ndarray) -> None:
        """Refuse training targets that cannot train (default: accept)."""

    @abstractmethod
    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The summed training loss of logits (n, n_classes) against targets of this kind."""

    @abstractmethod
    def evaluate(self, scored: list[TaskPredictions], split: str, headline: dict[str, str] | None = None) -> Evaluation:
        """Metrics of scored tasks."""

    @abstractmethod
    def selection_score(self, scored: list[TaskPredictions], headline: dict[str, str]) -> float:
        """What `--select val` maximises: the mean over tasks of the headline on the validation split."""

    @abstractmethod
    def write(self, out: Path, title: str, evaluation: Evaluation, details: dict[str, str]) -> None:
        """metrics.csv, per_class.csv, the kind's other CSVs and report.md (+ plots) into `out`."""

    @abstractmethod
    def decode(self, logits: Tensor, top_k: int, threshold: float) -> tuple[list[int], list[float]]:
        """One image's logits (n_classes,) as (chosen classes, their probabilities)."""

    def external(self, path: str, name: str, seed: int, classnames: list[str] | None) -> Task:
        """A folder or file evaluated with `cpt eval --data` (kinds that support it)."""
        raise CptError(f"--data is not available for {self.name} runs; they are evaluated on their own test labels.")
