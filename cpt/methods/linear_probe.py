"""Linear probe: scikit-learn logistic regression on frozen, normalised image features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from cpt.errors import CptError
from cpt.methods.base import Classifier, Method, TaskData
from cpt.methods.registry import register

log = logging.getLogger("cpt")


@dataclass
class LinearProbeConfig:
    c_grid: list[float] = field(default_factory=lambda: [10.0**k for k in np.arange(-2, 4.01, 0.5)])
    max_iter: int = 1000


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)


@register
class LinearProbe(Method):
    """Per task: logistic regression, its C chosen by validation accuracy (CoOp's protocol)."""

    name = "linear-probe"
    Config = LinearProbeConfig
    summary = "Logistic regression on frozen CLIP features, C chosen on validation (CoOp's protocol)."
    kinds = ("single-label",)
    uses = ("plain", "val")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.heads: list[tuple[torch.Tensor, torch.Tensor]] = []
        for title, names in zip(self.titles, self.classnames):
            if len(names) < 2:  # checked before the run directory exists; sklearn would fail after
                raise CptError(f"The linear probe needs at least two classes per task; {title!r} has "
                               f"{len(names)} ({', '.join(names) or 'none'}). Add class folders, or drop the task.")

    def fit(self, data: list[TaskData]) -> None:
        self.heads = []
        for task in data:
            x = F.normalize(task.train_plain.float(), dim=-1).numpy()
            y = task.targets.numpy()
            c = self._choose_c(task, x, y)
            model = _fit(x, y, c, self.cfg.max_iter)
            weight = np.zeros((len(task.classnames), x.shape[1]), dtype=np.float32)
            bias = np.full(len(task.classnames), -1e4, dtype=np.float32)  # unseen classes never win
            if len(model.classes_) == 2:  # sklearn keeps one row for two classes
                weight[model.classes_] = np.stack([-model.coef_[0], model.coef_[0]]) / 2
                bias[model.classes_] = np.array([-model.intercept_[0], model.intercept_[0]]) / 2
            else:
                weight[model.classes_] = model.coef_
                bias[model.classes_] = model.intercept_
            self.heads.append((torch.from_numpy(weight), torch.from_numpy(bias)))
            log.info("linear probe %s: C=%g", task.name, c)

    def _choose_c(self, task: TaskData, x: np.ndarray, y: np.ndarray) -> float:
        if len(task.val_targets) == 0:
            log.warning("task %s has no validation images: the linear probe uses C=1", task.name)
            return 1.0
        xv = F.normalize(task.val.float(), dim=-1).numpy()
        yv = task.val_targets.numpy()
        scores = [(_fit(x, y, c, self.cfg.max_iter).score(xv, yv), -abs(np.log10(c))) for c in self.cfg.c_grid]
        return self.cfg.c_grid[max(range(len(scores)), key=scores.__getitem__)]

    def classifiers(self) -> list[Classifier]:
        return [Classifier(weight=w, scale=1.0, bias=b) for w, b in self.heads]

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{k}.{t}": v for t, (w, b) in enumerate(self.heads) for k, v in (("weight", w), ("bias", b))}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.heads = [(state[f"weight.{t}"], state[f"bias.{t}"]) for t in range(len(self.classnames))]
