"""TempMe: temporal token merging for text-video retrieval (Shen et al., ICLR 2025, arXiv
2409.01156; reference code github.com/LunarShen/TempMe).

CLIP stays frozen; what trains, as in the released code, is LoRA (rank 8) on the q/k/v
projections of every block of both encoders and a zero-initialised frame position embedding
at each layer that joins clips. The image encoder merges tokens by the `--merge` schedule
(`cpt.core.merging`; TempMe's by default: 2 tokens a frame in the early layers, then 12
clips joined into 6, 3 and 1 with 30 % merged before attention and 10 % after, 10 % in the
last layer: 600 tokens of a 12-frame ViT-B/32 video end as 97). The video embedding is the
mean of the frames' normalised class-token features (CLIP4Clip's meanP), the caption's CLIP's
EOT feature.

Deviations from the reference: model selection on the validation split (the reference selects
on test); LoRA's A is initialised from `--seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cpt.core.attention import LoRA, attend
from cpt.core.backbone import Backbone
from cpt.core.merging import clips_after, encode_frames, frame_positions, join_counts, merge_option, parse_schedule
from cpt.methods.registry import register
from cpt.methods.retrieval.base import RetrievalMethod, check_frames, require_vit
from cpt.methods.retrieval.baselines import mean_pool
from cpt.options import Options, option

PANEL = "TempMe"


def lora_rank_option(default: int) -> Any:
    """The `--lora-rank` option."""
    return option(default, "Rank of the LoRA update of every attention block's q/k/v projections.", panel=PANEL,
                  low=1)


@dataclass
class TempMeConfig(Options):
    """TempMe's defaults: the released MSR-VTT configuration (ViT-B/32, 12 frames)."""

    lora_rank: int = lora_rank_option(8)
    merge: str = merge_option("tempme")
    tempme_max_frames: int = option(12, "Most frames a video may have (the frame position embeddings cover them).",
                                    panel=PANEL, low=1)
    tempme_frame_pos: bool = option(True, "Learn a frame position embedding (zero at the start) at each layer that "
                                    "joins clips.", panel=PANEL)
    frames: int = 12  # the run's --frames (filled from the kind's options), checked against the schedule
    seed: int = 0


def encode_text_lora(model: Any, tokens: Tensor, lora: LoRA | None) -> Tensor:
    """CLIP's text features (n, dim) with LoRA in every block; positions after the longest caption's
    EOT are left out (the causal mask keeps them from every EOT)."""
    dtype = model.dtype
    eot = tokens.argmax(dim=-1)  # EOT has the largest id
    length = int(eot.max()) + 1
    x = (model.token_embedding(tokens).to(dtype) + model.positional_embedding.to(dtype))[:, :length]
    mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
    for i, block in enumerate(model.transformer.resblocks):
        h = block.ln_1(x)
        x = x + attend(block, h, lora.delta(i, h) if lora is not None else None, mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    return model.ln_final(x[torch.arange(x.shape[0], device=x.device), eot]) @ model.text_projection


@register
class TempMe(RetrievalMethod):
    """LoRA in both encoders, token merging within frames and across clips, mean-pooled frames."""

    name = "tempme"
    Config = TempMeConfig
    summary = ("TempMe: LoRA with progressive token merging within frames and across clips in the image encoder "
               "(Shen et al., ICLR 2025).")
    trains = True
    video_input = "pixels"
    image_features = "encoded every step (LoRA in the frozen image encoder)"

    @classmethod
    def check(cls, cfg: Any, kind: str, settings: dict[str, Any]) -> None:
        check_frames(settings, cfg.tempme_max_frames, "--tempme-max-frames")

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: TempMeConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        model = backbone.model
        visual = model.visual
        require_vit(backbone, "tempme needs a ViT CLIP (it merges the image transformer's tokens)")
        self.check(cfg, "retrieval", {})
        model.requires_grad_(False)
        self.schedule = parse_schedule(cfg.merge, len(visual.transformer.resblocks))
        clips_after(self.schedule, cfg.frames)  # before any file is written
        width = visual.conv1.weight.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.video_lora = LoRA(len(visual.transformer.resblocks), width, cfg.lora_rank)
            self.text_lora = LoRA(len(model.transformer.resblocks), model.token_embedding.weight.shape[1],
                                  cfg.lora_rank)
        self.frame_pos = frame_positions(self.schedule, cfg.tempme_max_frames, width) if cfg.tempme_frame_pos else None
        self.to(backbone.device)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(encode_text_lora(self.backbone.model, tokens, self.text_lora).float(), dim=-1)

    def encode_video(self, video: Tensor) -> Tensor:
        pos = None
        if self.frame_pos is not None:  # fewer frames than the most: the first rows of each
            pos = [p[:n] for p, n in zip(self.frame_pos, join_counts(self.schedule, video.shape[1]))]
        frames = encode_frames(self.backbone.model.visual, video, self.schedule, self.video_lora, pos)
        return mean_pool(frames)
