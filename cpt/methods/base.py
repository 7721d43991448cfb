"""What every method provides: per-task training data in, one linear classifier per task out.

After training, prompts are constant, so each method's text side collapses to a matrix of
class embeddings per task: logits = scale * normalize(image_features) @ weight.T + bias.
Evaluation, export and prediction only ever see these `Classifier`s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cpt.backbone import Backbone
from cpt.losses import asymmetric_loss


@dataclass
class Classifier:
    """A frozen linear head on L2-normalised image features."""

    weight: Tensor  # (n_cls, dim)
    scale: float
    bias: Tensor | None = None  # (n_cls,)

    def logits(self, features: Tensor) -> Tensor:
        """(n, dim) image features -> (n, n_cls) logits."""
        x = F.normalize(features.float(), dim=-1)
        out = self.scale * x @ self.weight.float().T
        return out if self.bias is None else out + self.bias.float()


@dataclass
class TaskData:
    """One task's cached training features."""

    name: str
    classnames: list[str]
    train_views: Tensor  # (n, views, dim): augmented views for gradient training (or EncodedViews)
    train_plain: Tensor  # (n, dim): centre-crop view (linear probe)
    train_labels: Tensor  # (n,) class labels, or (n, n_cls) multi-label targets 1 / 0 / -1
    val: Tensor  # (m, dim)
    val_labels: Tensor  # (m,)
    train_strong: Tensor | None = None  # (n, views, dim): strongly augmented views (self-training)


def config_from(cls: type, options: dict[str, Any]) -> Any:
    """Build a config dataclass from the subset of `options` it has fields for."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})


class Method(ABC):
    """A method: built from a backbone and the tasks' class names, fitted, then frozen."""

    name: ClassVar[str]
    Config: ClassVar[type]
    trains: ClassVar[bool] = False  # runs the gradient train loop
    uses: ClassVar[tuple[str, ...]] = ()  # training features it needs: "views", "plain", "val", "strong"
    multi_label_only: ClassVar[bool] = False  # trains on multi-label targets only

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: Any, titles: list[str] | None = None) -> None:
        self.backbone = backbone
        self.classnames = classnames
        self.cfg = cfg
        self.titles = titles or [f"task {i}" for i in range(len(classnames))]  # natural-language task names

    def fit(self, data: list[TaskData]) -> None:
        """Fit without the gradient loop (closed-form or sklearn methods); default: nothing."""

    @abstractmethod
    def classifiers(self) -> list[Classifier]:
        """One frozen classifier per task, in task order."""

    def state(self) -> dict[str, Tensor]:
        """Learned tensors only (what checkpoint.pt stores)."""
        return {}

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `state()` returned."""

    def logit_scale(self) -> float:
        return float(self.backbone.model.logit_scale.exp())


class PromptMethod(Method, torch.nn.Module):
    """A method trained by gradient descent on the prompt (the text encoder stays frozen)."""

    trains = True
    uses = ("views",)
    task_mean = True  # loss: sum over tasks of each task's mean (False: mean over the mixed batch)

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: Any, titles: list[str] | None = None) -> None:
        torch.nn.Module.__init__(self)
        Method.__init__(self, backbone, classnames, cfg, titles)

    @abstractmethod
    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        """Normalised class embeddings (n_cls, dim) of task `task` (or of its `classes`), differentiable."""

    def logits(self, features: Tensor, task: int, classes: Tensor | None = None) -> Tensor:
        """Training logits (n, n_cls) for image features of one task, over all or the given classes."""
        weight = self.class_weights(task, classes).float()
        return self.logit_scale() * F.normalize(features.float(), dim=-1) @ weight.T

    def loss(self, logits: Tensor, labels: Tensor, task: int) -> Tensor:
        """Summed over the task's images (the train loop normalises, see `task_mean`): softmax
        cross-entropy over the task's classes for class labels (n,), the asymmetric loss over
        known entries for multi-label targets (n, n_cls) of 1 / 0 / -1."""
        if labels.dim() == 2:
            return asymmetric_loss(logits, labels)
        return F.cross_entropy(logits, labels, reduction="sum")

    def param_groups(self) -> list[dict]:
        """Optimiser groups of the trainable tensors; a group's `lr_scale` scales the schedule's rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def batch_loss(self, data: TaskData, task: int, rows: Tensor, classes: Tensor | None, epoch: int,
                   gen: torch.Generator) -> Tensor:
        """Summed loss of one task's share of a batch: `rows` holds (image, cached view) pairs;
        `classes` restricts the logits to those classes (class subsampling); `gen` is the
        epoch's generator for any further random choice, so resumed runs replay exactly."""
        device = self.backbone.device
        feats = data.train_views[rows[:, 0], rows[:, 1]].to(device)
        labels = data.train_labels[rows[:, 0]]
        if classes is not None:
            labels = torch.searchsorted(classes, labels)  # positions among the sampled classes
            classes = classes.to(device)
        return self.loss(self.logits(feats, task, classes).float(), labels.to(device), task)

    @torch.no_grad()
    def classifiers(self) -> list[Classifier]:
        return [
            Classifier(weight=self.class_weights(t).float().cpu(), scale=self.logit_scale())
            for t in range(len(self.classnames))
        ]

    def state(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)
