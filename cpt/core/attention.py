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


def _attention(block: nn.Module, q: Tensor, k: Tensor, v: Tensor, size: Tensor | None,
               mask: Tensor | None) -> Tensor:
    """Multi-head attention of projected q (n, Tq, width) over k, v (n, Tk, width), then out_proj."""
    attn = block.attn
    heads, width = attn.num_heads, q.shape[-1]

    def split(z: Tensor) -> Tensor:  # (n, heads, T, head_dim)
        return z.view(z.shape[0], z.shape[1], heads, width // heads).transpose(1, 2)

    logits = (split(q) * (width // heads) ** -0.5) @ split(k).transpose(-2, -1)
    if mask is not None:
        logits = logits + mask
    if size is not None:
        logits = logits + size.log()[:, None, None, :, 0]
    out = (logits.softmax(dim=-1) @ split(v)).transpose(1, 2).reshape(q.shape)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _mean_keys(k: Tensor, heads: int) -> Tensor:
    """Keys (n, T, width) averaged over heads: (n, T, head_dim)."""
    return k.view(k.shape[0], k.shape[1], heads, -1).mean(dim=2)


def attend(block: nn.Module, h: Tensor, qkv_delta: Tensor | None = None, size: Tensor | None = None,
           mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The block's self-attention of batch-first, already normalised `h` (n, T, width).

    qkv_delta (n, T, 3 * width): added to the packed q/k/v projections (LoRA); size (n, T, 1):
    how many patches each token stands for, its log added to every logit of that key
    (proportional attention); mask (T, T): added to the logits (CLIP's causal text mask).
    Returns the attention output (n, T, width) and the keys averaged over heads (n, T, head_dim),
    the similarity metric of ToMe and TempMe.
    """
    qkv = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias)
    if qkv_delta is not None:
        qkv = qkv + qkv_delta
    q, k, v = qkv.chunk(3, dim=-1)
    return _attention(block, q, k, v, size, mask), _mean_keys(k, block.attn.num_heads)


def attend_to(block: nn.Module, query: Tensor, context: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The block's attention of normalised `query` (n, Tq, width) over normalised `context` (n, Tk,
    width), whose tokens stand for `size` (n, Tk, 1) patches each; returns the output (n, Tq, width)
    and the context's keys averaged over heads."""
    w_q, w_k, w_v = block.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = block.attn.in_proj_bias.chunk(3)
    k = F.linear(context, w_k, b_k)
    out = _attention(block, F.linear(query, w_q, b_q), k, F.linear(context, w_v, b_v), size, None)
    return out, _mean_keys(k, block.attn.num_heads)
