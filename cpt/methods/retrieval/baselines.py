"""The retrieval baselines DGL is compared with.

- `zeroshot-video`: CLIP as it is; a video is the mean of its frames' normalised features
  (CLIP4Clip's parameter-free meanP), a caption CLIP's text feature.
- `coop-video`: text-prompt-only tuning; a CoOp-style learned context right after the start
  token of every caption, the video side as zero-shot (frozen, cached frame features).
- `clip4clip`: full fine-tuning (CLIP4Clip's meanP, Luo et al. 2022): every CLIP weight
  trains, videos are mean-pooled frame features; its frames are encoded every step, with
  `--merge` token merging in the image encoder if asked (TempMe's "full fine-tuning" setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.core.backbone import Backbone
from cpt.core.merging import clips_after, encode_frames, merge_option, parse_schedule
from cpt.core.prompt import n_ctx_option
from cpt.core.text import encode_embeddings
from cpt.errors import CptError
from cpt.methods.registry import register
from cpt.methods.retrieval.base import RetrievalMethod, require_vit
from cpt.options import Options


def mean_pool(frames: Tensor) -> Tensor:
    """Normalised video embeddings (b, dim) from frame features (b, frames, dim): meanP."""
    return F.normalize(F.normalize(frames.float(), dim=-1).mean(dim=1), dim=-1)


@dataclass
class PlainConfig(Options):
    """No options of its own."""

    seed: int = 0


@register
class ZeroShotVideo(RetrievalMethod):
    """CLIP's own text and (mean-pooled) image features."""

    name = "zeroshot-video"
    Config = PlainConfig
    summary = "Zero-shot CLIP for text-video retrieval: the mean of a video's frame features (Luo et al., 2022)."
    trains = False
    uses = ()

    def encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.backbone.model.encode_text(tokens).float(), dim=-1)

    def encode_video(self, video: Tensor) -> Tensor:
        return mean_pool(video)


@dataclass
class CoOpVideoConfig(Options):
    n_ctx: int = n_ctx_option(4)  # placed right after the start token of every caption
    init_std: float = 0.02
    seed: int = 0


def with_context(model: Any, tokens: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
    """Token embeddings (n, L, width) of `[SOT] ctx caption [EOT]` and the EOT positions (n,):
    the caption shifted right by the context, cut to keep its EOT within the context length
    (no Python branch on the data, so traced exports stay exact for every caption)."""
    length = tokens.shape[1]
    eot = tokens.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
    emb = model.token_embedding(tokens)  # (n, L, width)
    n_ctx = ctx.shape[0]
    x = torch.cat([emb[:, :1], ctx.to(emb.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1), emb[:, 1:length - n_ctx]],
                  dim=1)
    cut = (eot + n_ctx) > length - 1  # the caption lost its tail: its EOT goes in the last place
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    last = torch.where(cut[:, None], emb[rows, eot], x[:, length - 1])
    x = torch.cat([x[:, :length - 1], last[:, None]], dim=1)
    return x, (eot + n_ctx).clamp(max=length - 1)


@register
class CoOpVideo(RetrievalMethod):
    """A learned context before each caption; frozen CLIP, mean-pooled frames."""

    name = "coop-video"
    Config = CoOpVideoConfig
    summary = "Text-prompt-only tuning for retrieval: a CoOp context before each caption (Zhou et al., IJCV 2022)."
    trains = True

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: CoOpVideoConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        width = backbone.model.token_embedding.weight.shape[1]
        if cfg.n_ctx > backbone.model.context_length - 3:
            raise CptError(f"--n-ctx {cfg.n_ctx} leaves no room for a caption in this text encoder's "
                           f"{backbone.model.context_length} tokens.")
        gen = torch.Generator().manual_seed(cfg.seed)
        self.ctx = nn.Parameter((torch.randn(cfg.n_ctx, width, generator=gen) * cfg.init_std).to(backbone.device))

    def encode_text(self, tokens: Tensor) -> Tensor:
        model = self.backbone.model
        x, eot = with_context(model, tokens, self.ctx)
        return F.normalize(encode_embeddings(model, x, eot).float(), dim=-1)

    def encode_video(self, video: Tensor) -> Tensor:
        return mean_pool(video)


@dataclass
class Clip4ClipConfig(Options):
    merge: str = merge_option("none")
    frames: int = 12  # the run's --frames (filled from the kind's options), checked against --merge
    seed: int = 0


@register
class Clip4Clip(RetrievalMethod):
    """Every CLIP weight trains; videos are the mean of their frames' features."""

    name = "clip4clip"
    Config = Clip4ClipConfig
    summary = "Full fine-tuning baseline: CLIP4Clip's mean pooling, every CLIP weight trained (Luo et al., 2022)."
    trains = True
    video_input = "pixels"
    image_features = "encoded every step (the image encoder trains)"

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: Clip4ClipConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        if backbone.precision != "fp32":
            raise CptError("clip4clip trains every CLIP weight in fp32; drop --precision.")
        self.clip = backbone.model.float().requires_grad_(True)  # registered: its weights are the run's state
        merges = cfg.merge != "none"
        if merges:
            require_vit(backbone, "--merge needs a ViT CLIP (it merges the image transformer's tokens)")
        self.schedule = parse_schedule(cfg.merge, len(self.clip.visual.transformer.resblocks)) if merges else None
        if self.schedule is not None:
            clips_after(self.schedule, cfg.frames)  # before any file is written

    def tunes_image(self) -> bool:
        return True

    def encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def encode_video(self, video: Tensor) -> Tensor:
        if self.schedule is not None:
            return mean_pool(encode_frames(self.clip.visual, video.float(), self.schedule))
        b, t = video.shape[:2]
        frames = self.clip.encode_image(video.flatten(0, 1).float())  # (b * t, dim)
        return mean_pool(frames.view(b, t, -1))

    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp())

    def load_state(self, state: dict[str, Tensor]) -> None:
        super().load_state(state)
        self.backbone.mark_image_tuned()
