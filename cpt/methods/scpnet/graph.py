"""SCPNet's graph module: graph convolutions over the class text features, with a residual.

Each layer mixes every class's features with its neighbours' through the prior's adjacency
(rows sum to 1): D -> 2D -> 2D -> D, LeakyReLU(0.2) between layers, no bias, and the input
added back, so at initialisation (small weights) the output stays close to the text features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LabelGraph(nn.Module):
    """x -> x + A(...LeakyReLU(A x W1)...) W3 over a fixed (C, C) adjacency A."""

    def __init__(self, dim: int, adjacency: Tensor, generator: torch.Generator | None = None, width: int = 2) -> None:
        super().__init__()
        self.register_buffer("adjacency", adjacency.float(), persistent=False)  # rebuilt from the prior
        sizes = [dim, width * dim, width * dim, dim]
        self.weights = nn.ParameterList()
        for d_in, d_out in zip(sizes, sizes[1:]):
            bound = 1 / math.sqrt(d_out)  # Kipf & Welling's initialisation
            w = (torch.rand(d_in, d_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        for i, w in enumerate(self.weights):
            h = self.adjacency @ (h @ w)
            if i < len(self.weights) - 1:
                h = F.leaky_relu(h, 0.2)
        return x.float() + h
