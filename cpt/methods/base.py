"""What every method provides: per-task training data in, one linear classifier per task out.

After training, prompts are constant, so each method's text side collapses to a matrix of
class embeddings per task: logits = scale * normalize(image_features) @ weight.T + bias.
Evaluation, export and prediction only ever see these `Classifier`s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cpt.core.backbone import Backbone
from cpt.data.features import AugmentSpec, ViewOptions

if TYPE_CHECKING:
    from cpt.kinds import TaskKind


@dataclass
class KeyValueCache:
    """Tip-Adapter's cache model: few-shot image features (keys) and their one-hot labels (values).

    Its logits: alpha * exp(-beta * (1 - x @ keys.T)) @ values, for normalised features x.
    """

    keys: Tensor  # (n_cache, dim)
    values: Tensor  # (n_cache, n_cls)
    alpha: float  # residual ratio: weight of the cache's logits against the text classifier's
    beta: float  # sharpness of the affinity

    def logits(self, x: Tensor) -> Tensor:
        """(n, dim) normalised features -> (n, n_cls) cache logits."""
        affinity = x @ self.keys.float().T
        return self.alpha * torch.exp(-self.beta * (1 - affinity)) @ self.values.float()


@dataclass
class Classifier:
    """A frozen head on L2-normalised image features: linear, plus a key-value cache (Tip-Adapter)."""

    weight: Tensor  # (n_cls, dim)
    scale: float
    bias: Tensor | None = None  # (n_cls,)
    cache: KeyValueCache | None = None

    def logits(self, features: Tensor) -> Tensor:
        """(n, dim) image features -> (n, n_cls) logits."""
        x = F.normalize(features.float(), dim=-1)
        out = self.scale * x @ self.weight.float().T
        if self.cache is not None:
            out = out + self.cache.logits(x)
        return out if self.bias is None else out + self.bias.float()


@dataclass(frozen=True)
class Preset:
    """A published training recipe of a method (`cpt fit --preset NAME`): option values by name.

    `summary` says what it reproduces and where cpt cannot follow the authors; `source` names
    the files of the authors' code the numbers come from.
    """

    name: str
    summary: str
    source: str
    values: dict[str, Any] = field(default_factory=dict)


def preset_table(*recipes: Preset) -> dict[str, Preset]:
    """A method's `presets` table, by name."""
    return {p.name: p for p in recipes}


@dataclass
class TaskData:
    """One task's training data: cached features and the targets of its kind."""

    name: str
    classnames: list[str]
    kind: TaskKind  # what the targets are and which loss scores them
    targets: Tensor  # the kind's targets: (n,) class labels (single-label), (n, n_cls) in {1, 0, -1} (multi-label)
    train_views: Tensor  # (n, views, dim): augmented views for gradient training (or EncodedViews)
    train_plain: Tensor  # (n, dim): centre-crop view (linear probe)
    val: Tensor  # (m, dim) validation features (or EncodedViews when the image encoder trains)
    val_targets: Tensor  # the kind's targets of the validation images: (m,) or (m, n_cls)
    train_strong: Tensor | None = None  # (n, views, dim): strongly augmented views (self-training)
    tokens: Tensor | None = None  # retrieval: each training pair's caption tokens (n, context_length)


class Method(ABC):
    """A method: built from a backbone and the tasks' class names, fitted, then frozen.

    A method declares its options in `Config` (a cpt.options dataclass) and registers itself
    with `cpt.methods.register`; the CLI, `cpt methods` and config.json derive from those.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    summary: ClassVar[str]  # one line with its citation, for `cpt methods`
    kinds: ClassVar[tuple[str, ...]] = ("single-label", "multi-label")  # task kinds it supports
    trains: ClassVar[bool] = False  # runs the gradient train loop
    uses: ClassVar[tuple[str, ...]] = ()  # training features it needs: "views", "plain", "val", "strong"
    image_features: ClassVar[str] = "cached"  # how it gets image features (`cpt methods` says)
    excludes: ClassVar[dict[str, str]] = {}  # options its configs declare but it refuses: name -> why
    presets: ClassVar[dict[str, Preset]] = {}  # published recipes, by name (`--preset`)
    defaults: ClassVar[dict[str, Any]] = {}  # its published training options where they are not cpt's, by name

    @classmethod
    def check(cls, cfg: Any, kind: str, settings: dict[str, Any]) -> None:
        """Refuse settings that cannot mean anything for this method on tasks of `kind`
        (`settings`: every resolved option of the run, by name)."""

    @classmethod
    def default_epochs(cls, shots: int | None, kind: str) -> int:
        """The epoch budget when --epochs is not given (50, as SoftCPT and DualCoOp train)."""
        return 50

    def tunes_image(self) -> bool:
        """Whether training changes the image encoder (then views are encoded every step, not cached)."""
        return False

    @classmethod
    def transfers(cls, cfg: Any) -> bool:
        """Whether what it learns under `cfg` applies to classes it never saw (base-to-new): no per-class weights."""
        return False

    def image_encoder(self) -> torch.nn.Module | None:
        """The module from preprocessed pixels (n, 3, H, W) to image features when the method's is not
        the backbone's `model.visual` (MaPLe's prompts inside it): training, evaluation, export and
        prediction encode with it. None: the backbone's."""
        return None

    def augmentations(self, views: ViewOptions) -> dict[str, AugmentSpec]:
        """The augmented training views it trains on, by name ("views", "strong")."""
        return {}

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


class GradientMethod(Method, torch.nn.Module):
    """A method trained by the shared gradient loop (cpt.train): its parameters, its batch loss,
    its learned state."""

    trains = True
    uses = ("views",)
    task_mean = True  # loss: sum over tasks of each task's mean (False: mean over the mixed batch)

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: Any, titles: list[str] | None = None) -> None:
        torch.nn.Module.__init__(self)
        Method.__init__(self, backbone, classnames, cfg, titles)

    def prepare(self, data: list[TaskData]) -> None:
        """Set up what the training data decides (Tip-Adapter-F's cache), before the optimiser is built."""

    def finish(self, data: list[TaskData]) -> None:
        """After the last epoch: choose what is chosen on validation (Tip-Adapter-F's alpha and beta)."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups of the trainable tensors, each with its peak rate `lr` (`lr`: --lr)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    @abstractmethod
    def batch_loss(self, data: TaskData, task: int, rows: Tensor, classes: Tensor | None, epoch: int,
                   gen: torch.Generator, share: Tensor | None = None) -> Tensor:
        """Summed loss of one task's part of a batch: `rows` holds (sample, cached view) pairs;
        `classes` restricts the logits to those classes (class subsampling); `gen` is the
        epoch's generator for any further random choice, so resumed runs replay exactly.

        Several ranks: each is given all the rows and `share`, a mask of those it computes; a
        method draws from `gen` for every row (so all ranks draw alike, as one process does)
        and keeps any state it carries across batches the same on every rank.
        """

    def batch_rows(self, data: TaskData, rows: Tensor, classes: Tensor | None,
                   share: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """This process's part of a task's batch on the device: the cached views' features, the
        targets (positions among `classes` when classes are sampled) and `classes`."""
        if share is not None:
            rows = rows[share]
        device = self.backbone.device
        feats = data.train_views[rows[:, 0], rows[:, 1]].to(device)
        targets = data.targets[rows[:, 0]]
        if classes is not None:  # single-label: positions among the sampled classes
            targets = torch.searchsorted(classes, targets)
            classes = classes.to(device)
        return feats, targets.to(device), classes

    def state(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)


class PromptMethod(GradientMethod):
    """A classifier trained by gradient descent on the prompt (the text encoder stays frozen)."""

    def augmentations(self, views: ViewOptions) -> dict[str, AugmentSpec]:
        return {"views": AugmentSpec(views=views.aug_views, scale=(views.crop_scale, 1.0))}

    @abstractmethod
    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        """Normalised class embeddings (n_cls, dim) of task `task` (or of its `classes`), differentiable."""

    def prompt_term(self, task: int, weight: Tensor, classes: Tensor | None) -> Tensor | float:
        """A term on the batch's class embeddings `weight` (of `classes`, or all) added to each
        image's loss (KgCoOp's); none by default."""
        return 0.0

    def batch_loss(self, data: TaskData, task: int, rows: Tensor, classes: Tensor | None, epoch: int,
                   gen: torch.Generator, share: Tensor | None = None) -> Tensor:
        feats, targets, classes = self.batch_rows(data, rows, classes, share)
        weight = self.class_weights(task, classes).float()  # encoded once, for the logits and the term
        logits = self.logit_scale() * F.normalize(feats.float(), dim=-1) @ weight.T
        # summed over the task's images (the train loop normalises, see `task_mean`)
        return data.kind.loss(logits, targets) + len(targets) * self.prompt_term(task, weight, classes)

    @torch.no_grad()
    def classifiers(self) -> list[Classifier]:
        return [
            Classifier(weight=self.class_weights(t).float().cpu(), scale=self.logit_scale())
            for t in range(len(self.classnames))
        ]
