"""CLIP's text side, truncated: encode only the positions that can reach the EOT token.

CLIP's text transformer is causal and reads its output at the EOT position, so positions
after the longest prompt's EOT never influence any feature. Running the blocks over
`max(eot) + 1` positions instead of the full context (77) is exact and several times cheaper.

`model` is `clip.model.CLIP` or cpt.core.openclip's `OpenClipModel`: the same blocks, except that
OpenCLIP's attention is batch-first and may scale each residual branch (LayerScale, `ls_1`/`ls_2`).
"""

from __future__ import annotations

import functools
from typing import Callable

import clip
import torch
import torch.nn.functional as F
from clip.model import CLIP
from clip.simple_tokenizer import SimpleTokenizer
from torch import Tensor
from torch.utils.checkpoint import checkpoint

DeepPrompts = Callable[[int, Tensor], Tensor]  # (block index, its input (n, L, width)) -> the input it reads


@functools.cache
def tokenizer() -> SimpleTokenizer:
    """CLIP's BPE tokenizer (built once; it reads a vocabulary file)."""
    return SimpleTokenizer()


def special_ids() -> tuple[int, int]:
    """(start-of-text, end-of-text) token ids."""
    enc = tokenizer().encoder
    return enc["<|startoftext|>"], enc["<|endoftext|>"]


def word_ids(text: str) -> list[int]:
    """BPE ids of `text` without start/end tokens."""
    return tokenizer().encode(text)


def tokenize(texts: list[str], model: CLIP) -> Tensor:
    """Token ids padded to the model's context length; too-long texts are cut (EOT kept)."""
    return clip.tokenize(texts, context_length=model.context_length, truncate=True)


def causal_mask(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Additive causal mask (length, length): -inf above the diagonal."""
    return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)


_UNSCALED = torch.nn.Identity()


def _scaled(block: torch.nn.Module, name: str, x: Tensor) -> Tensor:
    """A residual branch through the block's layer scale `name`, where it has one (OpenCLIP)."""
    return getattr(block, name, _UNSCALED)(x)


def _block(block: torch.nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    h = block.ln_1(x)
    x = x + _scaled(block, "ls_1", block.attn(h, h, h, need_weights=False, attn_mask=mask)[0])
    return x + _scaled(block, "ls_2", block.mlp(block.ln_2(x)))


def run_blocks(model: CLIP, x: Tensor, grad_checkpoint: bool = False, deep: DeepPrompts | None = None) -> Tensor:
    """The text transformer over x (n, L, width) with a causal mask of size L.

    `grad_checkpoint` recomputes each block's activations in the backward pass instead of
    keeping them: less memory, about one more forward pass of time. `deep(i, x)` gives block i's
    input from the previous block's output x (n, L, width): deep prompts replace positions in it.
    """
    mask = causal_mask(x.shape[1], x.device, x.dtype)
    seq_first = not model.transformer.resblocks[0].attn.batch_first  # clip's blocks take (L, n, width)

    def flip(t: Tensor) -> Tensor:  # to and from the blocks' layout
        return t.permute(1, 0, 2) if seq_first else t

    x = flip(x)
    for i, block in enumerate(model.transformer.resblocks):
        if deep is not None:
            x = flip(deep(i, flip(x)))
        x = checkpoint(_block, block, x, mask, use_reentrant=False) if grad_checkpoint else _block(block, x, mask)
    return flip(x)


def encode_embeddings(model: CLIP, x: Tensor, eot: Tensor, grad_checkpoint: bool = False,
                      deep: DeepPrompts | None = None) -> Tensor:
    """Text features from token embeddings x (n, L, width) whose EOT sits at `eot` (n,).

    Only the first max(eot)+1 positions are computed. Returns (n, embed_dim), unnormalised,
    exactly what `model.encode_text` returns for the same token embeddings (`deep`: see `run_blocks`).
    """
    length = int(eot.max()) + 1
    x = x[:, :length].to(model.dtype) + model.positional_embedding[:length].to(model.dtype)
    x = model.ln_final(run_blocks(model, x, grad_checkpoint, deep)).to(model.dtype)
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, eot.to(x.device)] @ model.text_projection  # (n, embed_dim)


def encode_tokens(model: CLIP, tokens: Tensor, batch_size: int = 1024) -> Tensor:
    """Truncated `encode_text` for token ids (n, context_length), in batches."""
    device = model.positional_embedding.device
    out = []
    for chunk in tokens.split(batch_size):
        chunk = chunk.to(device)
        out.append(encode_embeddings(model, model.token_embedding(chunk), chunk.argmax(dim=-1)))
    return torch.cat(out)


def _heads(x: Tensor, n_heads: int) -> Tensor:
    """(n, L, width) -> (n, heads, L, head_dim)."""
    n, length, width = x.shape
    return x.view(n, length, n_heads, width // n_heads).transpose(1, 2)


def _shared_block(block: torch.nn.Module, xp: Tensor, xs: Tensor, mask_p: Tensor, mask_s: Tensor) -> tuple[Tensor, Tensor]:
    """One block over the shared prefix xp (1, P, width) and the suffixes xs (n, S, width)."""
    attn = block.attn
    heads = attn.num_heads
    hp, hs = block.ln_1(xp), block.ln_1(xs)
    qp, kp, vp = (_heads(t, heads) for t in F.linear(hp, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    qs, ks, vs = (_heads(t, heads) for t in F.linear(hs, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    scale = qp.shape[-1] ** -0.5
    out_p = torch.softmax(qp @ kp.transpose(-1, -2) * scale + mask_p, dim=-1) @ vp  # (1, h, P, d)
    # suffix queries see every prefix key and the suffix keys up to themselves
    scores = torch.cat([qs @ kp.transpose(-1, -2), qs @ ks.transpose(-1, -2) + mask_s], dim=-1) * scale
    weights = torch.softmax(scores, dim=-1)  # (n, h, S, P + S)
    p_len = xp.shape[1]
    out_s = weights[..., :p_len] @ vp + weights[..., p_len:] @ vs  # (n, h, S, d)
    xp = xp + _scaled(block, "ls_1", attn.out_proj(out_p.transpose(1, 2).reshape(xp.shape)))
    xs = xs + _scaled(block, "ls_1", attn.out_proj(out_s.transpose(1, 2).reshape(xs.shape)))
    xp = xp + _scaled(block, "ls_2", block.mlp(block.ln_2(xp)))
    return xp, xs + _scaled(block, "ls_2", block.mlp(block.ln_2(xs)))


def encode_shared_prefix(model: CLIP, prefix: Tensor, suffix: Tensor, eot: Tensor, grad_checkpoint: bool = False) -> Tensor:
    """Text features of prompts that all start with the same `prefix` embeddings.

    prefix (1, P, width): positions shared by every prompt (SOS + a generic context);
    suffix (n, S, width): each prompt's remaining positions, EOT at `eot` (n,) counted in
    the full prompt. Under the causal mask the prefix never sees the suffix, so its hidden
    states are computed once and every suffix attends to the prefix's keys and values:
    exact, and P times fewer positions per prompt than encoding each prompt whole.
    """
    dtype = model.dtype
    p_len, s_len = prefix.shape[1], suffix.shape[1]
    pos = model.positional_embedding.to(dtype)
    xp = prefix.to(dtype) + pos[:p_len]  # (1, P, width)
    xs = suffix.to(dtype) + pos[p_len : p_len + s_len]  # (n, S, width)
    mask_p = causal_mask(p_len, xp.device, dtype)
    mask_s = causal_mask(s_len, xs.device, dtype)
    for block in model.transformer.resblocks:
        if grad_checkpoint:
            xp, xs = checkpoint(_shared_block, block, xp, xs, mask_p, mask_s, use_reentrant=False)
        else:
            xp, xs = _shared_block(block, xp, xs, mask_p, mask_s)
    xs = model.ln_final(xs).to(dtype)
    rows = torch.arange(xs.shape[0], device=xs.device)
    return xs[rows, (eot - p_len).to(xs.device)] @ model.text_projection  # (n, embed_dim)

