"""LP++ (Huang et al., CVPR 2024): a linear probe whose class weights blend in the text embeddings.

Logits of a normalised image feature f for class k: f·w_k + b_k + alpha_k (f·t_k), with t_k the
class's text embedding, w_k a learned visual prototype and alpha_k a learned class-wise blend.
Full-batch gradient descent on the cross-entropy, with step sizes computed from the features
(no learning rate to tune); the iterate of best validation accuracy is kept. Since the logits
are linear in f, the trained head folds into one weight matrix w_k + alpha_k t_k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cpt.core.templates import template_embeddings
from cpt.methods.base import Classifier, Method, TaskData
from cpt.methods.registry import register
from cpt.methods.zeroshot import ZeroShotConfig
from cpt.options import option

log = logging.getLogger("cpt")

ALPHA_INIT_SCALE = 250.0  # the authors' factor on the mean text score of each class's own images
ALPHA_EVERY = 10  # the blends take one step every ALPHA_EVERY steps of the prototypes
MOMENTUM = 0.9  # of the prototypes' SGD, as the authors train them


@dataclass
class LppConfig(ZeroShotConfig):
    lpp_iters: int = option(300, "LP++: full-batch gradient steps (the authors' 300).", panel="LP++", low=1)


@dataclass
class Head:
    """One task's LP++ classifier, unfolded."""

    prototypes: Tensor  # (n_cls, dim) visual class weights w
    bias: Tensor  # (n_cls,)
    alpha: Tensor  # (n_cls,) blend of each class's text embedding
    text: Tensor  # (n_cls, dim) normalised text embeddings t

    def logits(self, x: Tensor) -> Tensor:
        """(n, dim) normalised features -> (n, n_cls): x·w_k + b_k + alpha_k x·t_k."""
        return x @ self.prototypes.T + self.bias + self.alpha * (x @ self.text.T)

    def folded(self) -> Classifier:
        """The same logits as one linear head: weight w_k + alpha_k t_k, scale 1."""
        weight = self.prototypes + self.alpha[:, None] * self.text
        return Classifier(weight=weight.float().cpu(), scale=1.0, bias=self.bias.float().cpu())

    def cpu(self) -> Head:
        return Head(self.prototypes.cpu(), self.bias.cpu(), self.alpha.cpu(), self.text.cpu())


def class_sums(x: Tensor, y: Tensor, n_cls: int) -> Tensor:
    """(n_cls, dim): the sum of each class's features, the authors' initial prototypes."""
    return torch.zeros(n_cls, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)


def initial_alpha(x: Tensor, y: Tensor, text: Tensor) -> float:
    """250 times the mean over classes of the mean text score f·t_y of the class's own images."""
    own = (x * text[y]).sum(dim=1)  # (n,) f_i·t_{y_i}
    classes, index = y.unique(return_inverse=True)
    per_class = torch.zeros(len(classes), dtype=x.dtype, device=x.device).index_add_(0, index, own)
    per_class /= torch.bincount(index, minlength=len(classes))
    return ALPHA_INIT_SCALE * float(per_class.mean())


def prototype_step(x: Tensor) -> float:
    """The prototypes' step size: 4 N / lambda_max(FᵀF) (the authors' Lipschitz-based rate)."""
    return 4 * x.shape[0] / float(torch.linalg.matrix_norm(x.double(), ord=2) ** 2)


def alpha_step(x: Tensor, text: Tensor) -> float:
    """The blends' step size: N / (4 max_k sum_i (f_i·t_k)^2)."""
    return x.shape[0] / (4 * float(((x.double() @ text.double().T) ** 2).sum(dim=0).max()))


def accuracy(head: Head, x: Tensor, y: Tensor) -> float:
    """The head's top-1 accuracy on normalised features x with labels y."""
    return float((head.logits(x).argmax(dim=1) == y).float().mean())


def train_head(x: Tensor, y: Tensor, text: Tensor, xv: Tensor, yv: Tensor, iters: int) -> tuple[Head, int]:
    """LP++ on normalised features x (n, dim) with labels y and text embeddings (n_cls, dim); the
    iterate of best accuracy on (xv, yv), the latest among ties (the last without validation
    images). Returns the head and its step (1-based)."""
    n_cls = len(text)
    prototypes = class_sums(x, y, n_cls).requires_grad_()
    bias = torch.zeros(n_cls, device=x.device, requires_grad=True)
    alpha = torch.full((n_cls,), initial_alpha(x, y, text), device=x.device, requires_grad=True)
    lr_alpha = alpha_step(x, text)
    optimizer = torch.optim.SGD([prototypes, bias], lr=prototype_step(x), momentum=MOMENTUM)
    text_scores = x @ text.T  # (n, n_cls), fixed
    best, best_acc, best_step = None, -1.0, 0
    for step in range(1, iters + 1):
        logits = x @ prototypes.T + bias + alpha * text_scores
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        alpha.grad = None  # each blend step takes the current gradient (the authors' code lets it accumulate)
        loss.backward()
        optimizer.step()
        if step % ALPHA_EVERY == 0:
            with torch.no_grad():
                alpha -= lr_alpha * alpha.grad
        head = Head(prototypes.detach().clone(), bias.detach().clone(), alpha.detach().clone(), text)
        acc = accuracy(head, xv, yv) if len(yv) else 0.0
        if acc >= best_acc:
            best, best_acc, best_step = head, acc, step
    return best, best_step


@register
class LinearProbePlusPlus(Method):
    """Per task: LP++'s blended linear probe, trained full-batch on the centre-crop features."""

    name = "lp++"
    Config = LppConfig
    summary = ("LP++: linear probe blended with the class text embeddings, data-driven step sizes "
               "(Huang et al., CVPR 2024).")
    kinds = ("single-label",)
    uses = ("plain", "val")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.heads: list[Head] = []

    def fit(self, data: list[TaskData]) -> None:
        device = self.backbone.device
        self.heads = []
        for task in data:
            text = template_embeddings(self.backbone, task.classnames, self.cfg.template).to(device)
            x = F.normalize(task.train_plain.float(), dim=-1).to(device)
            xv = F.normalize(task.val.float(), dim=-1).to(device)
            if len(task.val_targets) == 0:
                log.warning("task %s has no validation images: lp++ keeps its last iterate", task.name)
            head, step = train_head(x, task.targets.to(device), text, xv, task.val_targets.to(device),
                                    self.cfg.lpp_iters)
            self.heads.append(head.cpu())
            log.info("lp++ %s: kept step %d of %d, mean alpha %.3g", task.name, step, self.cfg.lpp_iters,
                     float(head.alpha.mean()))

    def classifiers(self) -> list[Classifier]:
        return [head.folded() for head in self.heads]

    def state(self) -> dict[str, Tensor]:
        return {f"{k}.{t}": v for t, head in enumerate(self.heads)
                for k, v in (("prototypes", head.prototypes), ("bias", head.bias), ("alpha", head.alpha),
                             ("text", head.text))}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.heads = [Head(state[f"prototypes.{t}"], state[f"bias.{t}"], state[f"alpha.{t}"], state[f"text.{t}"])
                      for t in range(len(self.classnames))]
