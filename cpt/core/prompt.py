"""The prompt-learner core shared by every method.

A class prompt is `[SOS] ... [EOS]` where `n_ctx` token slots hold context vectors instead
of word embeddings; the class name sits after (end), between the two halves of (middle), or
before (front) the context. `ClassPrompts` holds the frozen part (token embeddings of
every class prompt, where the context slots are, where EOT is); a method supplies the
context tensor — a learned parameter (CoOp), or the output of a meta network (SoftCPT).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from clip.model import CLIP
from torch import Tensor, nn

from cpt import dist
from cpt.errors import CptError
from cpt.options import Options, option
from cpt.core.text import encode_embeddings, encode_shared_prefix, special_ids, word_ids

POSITIONS = ("end", "middle", "front")
log = logging.getLogger("cpt")


PANEL = "Prompt"


def n_ctx_option(default: int) -> Any:
    """The `--n-ctx` option (one declaration; methods differ only in its default)."""
    return option(default, "Context tokens of the learned prompt.", panel=PANEL, low=1)


def ctx_init_option(default: str) -> Any:
    """The `--ctx-init` option."""
    return option(default, "Initialise the context from these words, e.g. 'a photo of a' (sets --n-ctx; empty: "
                  "random).", panel=PANEL)


@dataclass
class PromptConfig(Options):
    """Shape and initialisation of the learnable context."""

    n_ctx: int = n_ctx_option(16)
    ctx_init: str = ctx_init_option("")
    class_specific: bool = option(False, "One context per class (CoOp-CS) instead of one per task.", panel=PANEL)
    class_token_position: str = option("end", "Where the class name goes.", panel=PANEL, choices=POSITIONS)
    grad_checkpoint: bool = option(False, "Recompute text-encoder activations in backward: less memory, more time.",
                                   panel=PANEL)
    init_std: float = 0.02

    @classmethod
    def adjust(cls, values: dict[str, Any]) -> dict[str, Any]:
        """An explicit context length without init words means a random context."""
        if values.get("n_ctx") is not None and values.get("ctx_init") is None:
            return {**values, "ctx_init": ""}
        return values

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ctx_init:
            self.n_ctx = len(word_ids(self.ctx_init))


def _layout(name_ids: list[int], n_ctx: int, position: str, ctx_ids: list[int], room: int) -> tuple[list[int], list[int]]:
    """Token ids of one prompt and the indices of its context slots."""
    sot, eot = special_ids()
    period = word_ids(".")
    name_ids = name_ids[: max(room, 0)]
    if position == "end":
        body = ctx_ids + name_ids
        slots = list(range(1, 1 + n_ctx))
    elif position == "front":
        body = name_ids + ctx_ids
        slots = list(range(1 + len(name_ids), 1 + len(name_ids) + n_ctx))
    else:
        half = n_ctx // 2
        body = ctx_ids[:half] + name_ids + ctx_ids[half:]
        slots = list(range(1, 1 + half)) + list(range(1 + half + len(name_ids), 1 + n_ctx + len(name_ids)))
    return [sot, *body, *period, eot], slots


class ClassPrompts(nn.Module):
    """Frozen token embeddings of `[ctx] classname.` for one set of classes.

    Buffers are not saved in checkpoints: they are rebuilt from the class names and the model.
    """

    def __init__(self, model: CLIP, classnames: list[str], cfg: PromptConfig) -> None:
        super().__init__()
        self.n_ctx = cfg.n_ctx
        self.shared_prefix = cfg.class_token_position == "end"
        self.grad_checkpoint = cfg.grad_checkpoint
        ctx_ids = word_ids(cfg.ctx_init) if cfg.ctx_init else word_ids("X") * cfg.n_ctx
        room = model.context_length - 3 - cfg.n_ctx  # SOS, period, EOS
        if room < 1:
            raise CptError(f"--n-ctx {cfg.n_ctx} (or the words of --ctx-init) leaves no room for the class name in this "
                           f"text encoder's {model.context_length} tokens; use at most {model.context_length - 4}.")
        rows, slots = [], []
        for name in classnames:
            ids = word_ids(name)
            if len(ids) > room:
                log.warning("class name %r is longer than the context allows; it is cut to %d tokens", name, room)
            tokens, where = _layout(ids, cfg.n_ctx, cfg.class_token_position, ctx_ids, room)
            rows.append(tokens)
            slots.append(where)
        length = max(len(r) for r in rows)  # truncation: nothing after the last EOT matters
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        device = model.positional_embedding.device
        ids = ids.to(device)
        with torch.no_grad():
            base = model.token_embedding(ids)  # (n_cls, L, width)
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("eot", torch.tensor([len(r) - 1 for r in rows], device=device), persistent=False)
        self.register_buffer("slots", torch.tensor(slots, device=device), persistent=False)  # (n_cls, n_ctx)
        self.register_buffer("init_ctx", base[0, self.slots[0]].clone(), persistent=False)  # (n_ctx, width)

    @property
    def n_cls(self) -> int:
        return self.base.shape[0]

    def fill(self, ctx: Tensor, rows: Tensor | None = None) -> Tensor:
        """Embeddings (n, L, width) with `ctx` (n_ctx, width) or (n_cls, n_ctx, width) in the slots;
        all classes, or the classes `rows`."""
        base, slots = (self.base, self.slots) if rows is None else (self.base[rows], self.slots[rows])
        ctx = ctx.to(base.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(base.shape[0], -1, -1)
        elif rows is not None:
            ctx = ctx[rows]
        index = slots.unsqueeze(-1).expand(-1, -1, base.shape[-1])
        return base.scatter(1, index, ctx)  # differentiable w.r.t. ctx

    def encode(self, model: CLIP, ctx: Tensor, rows: Tensor | None = None) -> Tensor:
        """Text features (n, embed_dim) of the class prompts (all, or `rows`) under `ctx`.

        A generic context before the class name is a prefix shared by every class: it is
        encoded once (`encode_shared_prefix`); otherwise each prompt is encoded up to its EOT.
        Inside `cpt.dist.sharded_classes()` each rank encodes a block of the rows and the blocks
        are gathered with their gradients: the same features, a world-th of the work per rank.
        """
        if dist.sharding_classes():
            every = torch.arange(self.n_cls, device=self.base.device) if rows is None else rows
            return dist.gather_encoded(lambda block: self._encode(model, ctx, block), every)
        return self._encode(model, ctx, rows)

    def _encode(self, model: CLIP, ctx: Tensor, rows: Tensor | None) -> Tensor:
        eot = self.eot if rows is None else self.eot[rows]
        if self.shared_prefix and ctx.dim() == 2:
            n = 1 + self.n_ctx
            base = self.base if rows is None else self.base[rows]
            prefix = torch.cat([self.base[:1, :1], ctx.to(self.base.dtype).unsqueeze(0)], dim=1)  # (1, n, width)
            suffix = base[:, n : int(eot.max()) + 1]
            return encode_shared_prefix(model, prefix, suffix, eot, self.grad_checkpoint)
        return encode_embeddings(model, self.fill(ctx, rows), eot, self.grad_checkpoint)


def init_context(prompts: ClassPrompts, cfg: PromptConfig, generator: torch.Generator | None = None) -> Tensor:
    """Initial context: the init words' embeddings (repeated per class if class-specific), else
    N(0, init_std), drawn independently per class if class-specific (as CoOp-CS)."""
    width = prompts.base.shape[-1]
    per_class = (prompts.n_cls,) if cfg.class_specific else ()
    if cfg.ctx_init:
        ctx = prompts.init_ctx.float().cpu().expand(*per_class, -1, -1).clone()
    else:
        ctx = torch.randn(*per_class, cfg.n_ctx, width, generator=generator) * cfg.init_std
    return ctx.to(prompts.base.device)
