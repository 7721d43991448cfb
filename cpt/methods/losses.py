"""Multi-label losses: ASL over known entries (unknown = -1 never counts), SPLC for single-positive labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def asymmetric_loss(logits: Tensor, targets: Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05) -> Tensor:
    """ASL (Ridnik et al., ICCV 2021), summed over the known entries.

    Negatives are down-weighted by (p_m)^gamma_neg, with the probability shifted by `clip`
    (p_m = max(p - clip, 0)) so easy negatives stop counting; positives by (1 - p)^gamma_pos.
    The focal weights are constants of the step: as in the ASL authors' training
    (`disable_torch_grad_focal_loss=True`), no gradient flows through them, only through the logs.
    """
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    w_pos, w_neg = (1 - p).pow(gamma_pos).detach(), p_neg.pow(gamma_neg).detach()
    pos = targets.eq(1) * torch.log(p.clamp(min=1e-8)) * w_pos
    neg = targets.eq(0) * torch.log((1 - p_neg).clamp(min=1e-8)) * w_neg
    return -(pos + neg).sum()


def splc_loss(logits: Tensor, targets: Tensor, correct: bool, tau: float = 0.6, margin: float = 1.0,
              gamma: float = 2.0) -> Tensor:
    """SPLC (Zhang et al., 2022), the robust loss of single-positive training, summed.

    Every entry that is not a known positive counts as a negative, except where the model is
    already confident (sigmoid > `tau`, once `correct` is on: after the first epoch), which
    are taken as missed positives. Focal-margin terms: positives' logits lowered by `margin`,
    each entry weighted by its error to the power `gamma`.
    """
    logits = logits.float()
    positive = targets.eq(1)
    logits = torch.where(positive, logits - margin, logits)
    if correct:
        positive = positive | (torch.sigmoid(logits) > tau)
    y = positive.float()
    p = torch.sigmoid(logits)
    weight = ((1 - p) * y + p * (1 - y)).pow(gamma)
    nll = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits))
    return (weight * nll).sum()
