"""CLIP's text side, truncated: encode only the positions that can reach the EOT token.

CLIP's text transformer is causal and reads its output at the EOT position, so positions
after the longest prompt's EOT never influence any feature. Running the blocks over
`max(eot) + 1` positions instead of the full context (77) is exact and several times cheaper.
"""

from __future__ import annotations

import functools

import clip
import torch
from clip.model import CLIP
from clip.simple_tokenizer import SimpleTokenizer
from torch import Tensor


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


def run_blocks(model: CLIP, x: Tensor) -> Tensor:
    """The text transformer over x (n, L, width) with a causal mask of size L."""
    mask = causal_mask(x.shape[1], x.device, x.dtype)
    x = x.permute(1, 0, 2)  # (L, n, width): clip's blocks are sequence-first
    for block in model.transformer.resblocks:
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    return x.permute(1, 0, 2)


def encode_embeddings(model: CLIP, x: Tensor, eot: Tensor) -> Tensor:
    """Text features from token embeddings x (n, L, width) whose EOT sits at `eot` (n,).

    Only the first max(eot)+1 positions are computed. Returns (n, embed_dim), unnormalised,
    exactly what `model.encode_text` returns for the same token embeddings.
    """
    length = int(eot.max()) + 1
    x = x[:, :length].to(model.dtype) + model.positional_embedding[:length].to(model.dtype)
    x = model.ln_final(run_blocks(model, x)).to(model.dtype)
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
