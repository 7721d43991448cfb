"""The retrieval-method contract: a text encoder and a video encoder into one embedding space,
trained with the symmetric InfoNCE over a batch's video-caption pairs.

A method says what its video encoder reads (`video_input`): `"features"`, per-frame CLIP
image features (b, frames, dim) that cpt caches once (the image encoder stays frozen), or
`"pixels"`, normalised frames (b, frames, 3, res, res) that a trainable video side encodes
every step. Captions arrive tokenised (n, context_length).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cpt import dist
from cpt.core.backbone import PREFIX, Backbone
from cpt.errors import CptError
from cpt.methods.base import GradientMethod, TaskData

VIDEO_INPUTS = ("features", "pixels")


def require_vit(backbone: Backbone, need: str) -> None:
    """Refuse a ResNet CLIP, or an OpenCLIP model (its image transformer is built otherwise: batch-first
    blocks, layer scales, other pooling), for a method whose video side rewrites OpenAI's ViT internals."""
    if backbone.spec.startswith(PREFIX):
        raise CptError(f"{need}, as OpenAI's CLIP builds it; {backbone.spec} is an OpenCLIP model, whose image "
                       "transformer differs. Use an OpenAI CLIP (--backbone ViT-B/32, ...) for this method.")
    if not hasattr(backbone.model.visual, "transformer"):
        raise CptError(f"{need}; this backbone is a ResNet.")


def check_frames(settings: dict[str, Any], most: int, flag: str) -> None:
    """Refuse more --frames than a method's per-frame parameters cover (`flag` raises it)."""
    frames = settings.get("frames")
    if frames is not None and frames > most:
        raise CptError(f"--frames {frames} is more than {flag} {most}; raise it.")


def info_nce(video: Tensor, text: Tensor, scale: float, videos: Tensor | None = None,
             rows: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of b (video, caption) pairs, embeddings normalised (b, dim) each: the
    video->text and text->video cross-entropies with the diagonal as targets, halved and summed
    over the pairs `rows` (all by default).

    `videos` (b,): each pair's video id; another pair of the same video (two captions of one
    video in the batch) is no negative and is left out of both softmaxes.
    """
    logits = scale * video @ text.T  # (b, b)
    if videos is not None:
        same = videos[:, None].eq(videos[None, :]) & ~torch.eye(len(videos), dtype=torch.bool)
        logits = logits.masked_fill(same.to(logits.device), float("-inf"))
    rows = torch.arange(len(video)) if rows is None else rows
    target = rows.to(video.device)
    rows = rows.to(video.device)
    return 0.5 * (F.cross_entropy(logits[rows], target, reduction="sum")
                  + F.cross_entropy(logits.T[rows], target, reduction="sum"))


class RetrievalMethod(GradientMethod):
    """A text-video retrieval method: `encode_text`, `encode_video`, CLIP's logit scale."""

    kinds = ("retrieval",)
    video_input: ClassVar[str] = "features"

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Normalised caption embeddings (n, dim) of tokenised captions (n, context_length), differentiable."""
        raise NotImplementedError

    def encode_video(self, video: Tensor) -> Tensor:
        """Normalised video embeddings (b, dim) of (b, frames, dim) features or (b, frames, 3, res, res) pixels."""
        raise NotImplementedError

    def logit_scale(self) -> float:
        return float(self.backbone.model.logit_scale.exp())

    def trainable_share(self) -> float:
        """Trainable parameters as a share of CLIP's parameter count."""
        mine = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return mine / sum(p.numel() for p in self.backbone.model.parameters())

    def classifiers(self) -> list:
        """Retrieval has no classes: runs are scored by `encode_text` and `encode_video`."""
        return []

    def batch_loss(self, data: TaskData, task: int, rows: Tensor, classes: Tensor | None, epoch: int,
                   gen: torch.Generator, share: Tensor | None = None) -> Tensor:
        """InfoNCE over the batch's pairs: `rows` holds (pair, clip) indices, `data.targets` each
        pair's video and `data.tokens` its caption.

        Several ranks: each encodes a block of the pairs, the blocks are gathered with their
        gradients, and each rank sums the loss terms of its own block, so the sum over ranks is
        the one-process loss with every other pair of the batch as a negative.
        """
        device = self.backbone.device
        pairs, clips = rows[:, 0], rows[:, 1]
        dim = self.backbone.geometry["embed_dim"]

        def encode(block: Tensor) -> Tensor:  # (k, 2 * dim): video then caption embeddings
            video = self.encode_video(data.train_views[pairs[block], clips[block]].to(device))
            return torch.cat([video.float(), self.encode_text(data.tokens[pairs[block]].to(device)).float()], dim=1)

        every = torch.arange(len(rows))
        if share is None:
            both, mine = encode(every), None
        else:
            both = dist.gather_encoded(encode, every)
            per = -(-len(rows) // dist.world_size())
            mine = every[dist.rank() * per:(dist.rank() + 1) * per]
        return info_nce(both[:, :dim], both[:, dim:], self.logit_scale(), data.targets[pairs], mine)
