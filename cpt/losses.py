"""Multi-label losses over known entries only (targets 1 / 0 / -1 = unknown, which never count)."""

from __future__ import annotations

import torch
from torch import Tensor


def asymmetric_loss(logits: Tensor, targets: Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05) -> Tensor:
    """ASL (Ridnik et al., ICCV 2021), summed over the known entries.

    Negatives are down-weighted by (p_m)^gamma_neg, with the probability shifted by `clip`
    (p_m = max(p - clip, 0)) so easy negatives stop counting; positives by (1 - p)^gamma_pos.
    """
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    pos = targets.eq(1) * torch.log(p.clamp(min=1e-8)) * (1 - p).pow(gamma_pos)
    neg = targets.eq(0) * torch.log((1 - p_neg).clamp(min=1e-8)) * p_neg.pow(gamma_neg)
    return -(pos + neg).sum()
