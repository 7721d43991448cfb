"""CLIP's residual attention block written out, for what nn.MultiheadAttention does not expose:
a low-rank (LoRA) update of the q/k/v projections, proportional attention over merged tokens
(a token standing for s patches counts s times), and the keys, which token merging matches on.

With no LoRA, no sizes and the same mask it computes what the block's own forward does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRA(nn.Module):
    """Rank-r updates of every block's packed q/k/v projection: delta = B (A h), per layer.
    A starts Kaiming-uniform (a = sqrt(5), torch's nn.Linear default), B at zero, so the
    model starts as CLIP (TempMe's released code: rank 8, both encoders)."""

    def __init__(self, layers: int, width: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(layers, rank, width))
        for a in self.a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(layers, 3 * width, rank))

    def delta(self, layer: int, h: Tensor) -> Tensor:
        """The q/k/v update (…, 3 * width) of layer `layer` for its normalised input h."""
        return F.linear(F.linear(h, self.a[layer].to(h.dtype)), self.b[layer].to(h.dtype))


def attend(block: nn.Module, h: Tensor, qkv_delta: Tensor | None = None, size: Tensor | None = None,
           mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The block's self-attention of batch-first, already normalised `h` (n, T, width).

    qkv_delta (n, T, 3 * width): added to the packed q/k/v projections (LoRA); size (n, T, 1):
    how many patches each token stands for, its log added to every logit of that key
    (proportional attention); mask (T, T): added to the logits (CLIP's causal text mask).
    Returns the attention output (n, T, width) and the keys averaged over heads (n, T, head_dim),
    the similarity metric of ToMe and TempMe.
    """
    attn = block.attn
    n, length, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    if qkv_delta is not None:
        qkv = qkv + qkv_delta
    q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # each (n, heads, T, hd)
    logits = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits + mask
    if size is not None:
        logits = logits + size.log()[:, None, None, :, 0]
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias), k.mean(dim=1)
