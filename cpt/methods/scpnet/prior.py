"""SCPNet's structured semantic prior: label-to-label relations from CLIP's text encoder.

similarity  cosine similarity of the class-name embeddings (one template), symmetric;
adjacency   kept top-k per row, self-loops removed, rows rescaled to the neighbour mass p,
            then the diagonal set to 1 - p (rows sum to 1): the graph module's matrix;
relation    a row-wise softmax of the adjacency at temperature T over the kept entries,
            renormalised (rows sum to 1): the prior that calibrates soft targets.
`cooccurrence` and `agreement` check a prior against a task's labels (is it informative here?).
Defaults follow SCPNet's COCO setting (p = 0.2, T = 0.2; top-k 62 of 80 classes, i.e. 78 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cpt.core.backbone import Backbone
from cpt.errors import CptError
from cpt.data.multilabel import UNKNOWN
from cpt.core.templates import template_embeddings


@dataclass
class PriorConfig:
    template: str = "a photo of a {}."
    topk: int | None = None  # kept neighbours per row (self included); None: 78 % of the classes
    reweight_p: float = 0.2
    temperature: float = 0.2

    def k(self, n: int) -> int:
        k = self.topk if self.topk is not None else max(1, round(0.78 * n))
        if not 1 <= k <= n:
            raise CptError(f"--topk {k} must be between 1 and the number of classes ({n}).")
        return k


@dataclass
class Prior:
    classnames: list[str]
    similarity: torch.Tensor  # (C, C)
    adjacency: torch.Tensor  # (C, C), rows sum to 1
    relation: torch.Tensor  # (C, C), rows sum to 1
    config: PriorConfig

    def frames(self) -> dict[str, pd.DataFrame]:
        """The three matrices as labelled tables (rows and columns are the classes)."""
        return {name: pd.DataFrame(getattr(self, name).numpy(), index=self.classnames, columns=self.classnames)
                for name in ("similarity", "adjacency", "relation")}


def build_prior(similarity: torch.Tensor, cfg: PriorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(adjacency, relation) from a similarity matrix, as SCPNet sparsifies and re-weights it."""
    n = len(similarity)
    keep = torch.zeros_like(similarity, dtype=torch.bool)
    keep.scatter_(1, similarity.topk(cfg.k(n), dim=1).indices, True)
    eye = torch.eye(n, dtype=torch.bool)
    neighbours = torch.where(keep & ~eye, similarity, torch.zeros(()))
    mass = neighbours.sum(dim=1, keepdim=True)
    adjacency = torch.where(mass > 0, neighbours / mass.clamp_min(1e-12), neighbours) * cfg.reweight_p
    adjacency = torch.where(eye, torch.full_like(adjacency, 1 - cfg.reweight_p), adjacency)
    logits = torch.where(keep, adjacency / cfg.temperature, torch.full_like(adjacency, float("-inf")))
    return adjacency, torch.softmax(logits, dim=1)


def label_prior(backbone: Backbone, classnames: list[str], cfg: PriorConfig | None = None) -> Prior:
    """The prior of `classnames` under `backbone`'s text encoder."""
    cfg = cfg or PriorConfig()
    if len(classnames) < 2:
        raise CptError("A label prior needs at least two classes.")
    feats = template_embeddings(backbone, classnames, [cfg.template])  # normalised (C, dim)
    similarity = feats @ feats.T
    adjacency, relation = build_prior(similarity, cfg)
    return Prior(classnames, similarity, adjacency, relation, cfg)


def cooccurrence(targets: np.ndarray) -> np.ndarray:
    """(C, C) P(j positive | i positive), over the images where entry j is known (targets 1 / 0 / -1);
    NaN where class i has no positive with j known."""
    positive = (targets == 1).astype(float)
    known = (targets != UNKNOWN).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive.T @ positive) / (positive.T @ known)


def agreement(similarity: torch.Tensor, cooc: np.ndarray) -> float:
    """Pearson correlation between the prior's similarities and the labels' co-occurrence, off the
    diagonal: how much the text encoder's notion of related labels matches these labels (NaN if undefined)."""
    sim = similarity.numpy()
    keep = ~np.eye(len(sim), dtype=bool) & np.isfinite(cooc)
    if keep.sum() < 2 or np.std(cooc[keep]) == 0:
        return float("nan")
    return float(np.corrcoef(sim[keep], cooc[keep])[0, 1])
