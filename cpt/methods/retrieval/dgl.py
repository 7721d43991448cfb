"""DGL: Dynamic Global-Local prompt tuning for text-video retrieval (Yang, Zhu, Wang and Yang,
AAAI 2024, arXiv 2401.10588; reference code github.com/knightyxp/DGL).

CLIP stays frozen; what trains is a set of prompts in both encoders, every layer deep:

- one shared latent space: per layer l, `n_local` latent vectors z_l (n_local, latent_dim).
  Local (frame) prompts are the latent vectors themselves (mapped to the image width when
  latent_dim differs from it); text prompts are small linear maps of the same vectors,
  `n_text / n_local` of them (the reference's prefix and postfix projections): text and frame
  prompts of one layer are generated from the same z_l ("linear", the reference's Unified
  Linear Projection and the 0.83M-parameter model its README quotes). `--dgl-latent
  transformer` is the reference's other generator: learned latent tokens per layer
  (n_text + n_local * frames of them) through one transformer block of the latent width, the
  first n_text mapped to the text width by a 2-layer MLP, the rest per-frame local prompts.
- text: the text prompts follow the start token, the caption after them; every layer's
  prompts replace the previous layer's output at those positions. As in the reference, the
  prompts carry no positional embedding and the caption's tokens keep their own (added before
  the prompts go in), so no caption is cut; the feature is read at the (shifted) EOT token,
  through ln_final and text_projection.
- video: each frame is CLIP's token sequence [CLS, local prompts, patches] (ln_pre applied
  before the prompts go in, as the reference); `n_global` global prompts are shared by all
  frames of a video (given once, carried through the layers). In every block (global-local
  attention): a frame's tokens attend to the global prompts and the frame's own tokens; the
  global prompts attend to themselves and to every token of every frame. The video embedding
  is the first global prompt's output through ln_post and proj (the reference's default
  `global_prompt0`).

`--merge` (off by default; not in the reference) merges the frames' tokens as TempMe does
(cpt.core.merging): each frame's class token and local prompts are kept, the rest merged after
attention with proportional attention in both the frames' and the global prompts' attention, and
neighbouring frames joined into clips that then read each other.

Deviations from the reference, and why:

- text prompt placement: the reference puts half of its 8 text prompts after the caption
  (after the EOT and its padding), where CLIP's causal mask leaves them without any effect
  on the EOT feature and without gradient. Here all text prompts sit right after the start
  token (the prefix projection's tokens first), so every one of them shapes the feature.
- frame order: the reference's linear generator gives every frame the same local prompts,
  and its frame position embedding (`--time_embedding`) is commented out, so its video
  embedding is invariant to the order of the frames (its transformer generator does give
  each frame index its own prompts). `--dgl-temporal` (on by default) adds a learned
  embedding of the frame index to that frame's local prompts in every layer, so the global
  prompts can tell a clip from its time-reversal.
- widths are read from the model (the reference hard-codes 768 for the global prompts), and
  a latent width other than the image width gets a linear map to the local prompts.
- the reference's transformer generator runs its text encoder only `depth` layers deep when
  depth is below the number of layers; here depth only says which layers get new prompts.
- `--dgl-no-global-local` (ablation): frames no longer see the global prompts (each frame is
  CLIP with its local prompts, on its own) and the global prompts read only themselves and
  the frames' class tokens of each layer (the frame-level features) instead of every token.
- initialisation follows the reference (latent vectors and global prompts uniform in
  +-sqrt(6 / (3 * patch^2 + width)), linear maps torch's defaults, transformer latents
  N(0, 1)); the temporal embedding is N(0, 0.02^2), seeded by `seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from clip.model import QuickGELU, ResidualAttentionBlock
from torch import Tensor, nn

from cpt.core.attention import attend_to
from cpt.core.backbone import Backbone
from cpt.core.merging import (
    NONE,
    LayerMerge,
    clips_after,
    join_and_merge,
    merge_after_attention,
    merge_option,
    parse_schedule,
)
from cpt.errors import CptError
from cpt.methods.registry import register
from cpt.methods.retrieval.base import RetrievalMethod, check_frames, require_vit
from cpt.options import Options, option

PANEL = "DGL"
LATENTS = ("linear", "transformer")


@dataclass
class DGLConfig(Options):
    """DGL's defaults: the reference's MSR-VTT configuration (ViT-B/32)."""

    dgl_text_prompts: int = option(8, "Text prompts per layer (after the start token); with the linear latent a "
                                   "multiple of --dgl-local-prompts (one projection per group).", panel=PANEL, low=0)
    dgl_local_prompts: int = option(4, "Local prompts per frame and layer (the shared latent vectors).", panel=PANEL,
                                    low=1)
    dgl_global_prompts: int = option(4, "Global video prompts; the first one's output is the video embedding.",
                                     panel=PANEL, low=1)
    dgl_latent: str = option("linear", "Prompt generator from the shared latent space: 'linear' (projections of the "
                             "latent vectors) or 'transformer' (a transformer block over latent tokens).",
                             panel=PANEL, choices=LATENTS)
    dgl_latent_dim: int | None = option(None, "Width of the shared latent space [default: the image encoder's width].",
                                        panel=PANEL, low=1)
    dgl_depth: int | None = option(None, "Layers that get new prompts, from the first [default: all].", panel=PANEL,
                                   low=1)
    dgl_max_frames: int = option(12, "Most frames a video may have (temporal embedding, per-frame prompts of the "
                                 "transformer latent).", panel=PANEL, low=1)
    dgl_temporal: bool = option(True, "Add a learned frame-index embedding to each frame's local prompts, so the "
                                "video embedding sees frame order (not in the reference).", panel=PANEL)
    dgl_no_global_local: bool = option(False, "Ablation: no global-local attention (frames do not see the global "
                                       "prompts; these read only the frames' class tokens).", panel=PANEL)
    merge: str = merge_option("none")
    frames: int = 12  # the run's --frames (filled from the kind's options), checked against --merge
    seed: int = 0


def _uniform(shape: tuple[int, ...], bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _attend(block: nn.Module, query: Tensor, keys: Tensor) -> Tensor:
    """Block's attention of batch-first `query` (n, q, d) over `keys` (n, k, d), no mask."""
    out = block.attn(query.transpose(0, 1), keys.transpose(0, 1), keys.transpose(0, 1), need_weights=False)[0]
    return out.transpose(0, 1)


@register
class DGL(RetrievalMethod):
    """Cross-modal prompts from one latent space, global video prompts, global-local attention."""

    name = "dgl"
    Config = DGLConfig
    summary = ("DGL: text and frame prompts from one shared latent space, global video prompts with global-local "
               "attention, CLIP frozen (Yang et al., AAAI 2024).")
    video_input = "pixels"
    image_features = "encoded every step (prompts in the frozen image encoder)"

    @classmethod
    def check(cls, cfg: Any, kind: str, settings: dict[str, Any]) -> None:
        check_frames(settings, cfg.dgl_max_frames, "--dgl-max-frames")
        if cfg.dgl_latent == "linear" and cfg.dgl_text_prompts % cfg.dgl_local_prompts:
            raise CptError(f"--dgl-text-prompts {cfg.dgl_text_prompts} must be a multiple of --dgl-local-prompts "
                           f"{cfg.dgl_local_prompts} with the linear latent (one projection per group).")

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: DGLConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        model = backbone.model
        visual = model.visual
        require_vit(backbone, "dgl needs a ViT CLIP (its prompts go into the image transformer)")
        self.check(cfg, "retrieval", {})
        model.requires_grad_(False)
        self.text_width = model.token_embedding.weight.shape[1]
        self.text_layers = len(model.transformer.resblocks)
        self.width = visual.conv1.weight.shape[0]
        self.vision_layers = len(visual.transformer.resblocks)
        patch = visual.conv1.weight.shape[-1]
        depth = cfg.dgl_depth or max(self.text_layers, self.vision_layers)
        self.text_depth = min(depth, self.text_layers)
        self.vision_depth = min(depth, self.vision_layers)
        self.layers = max(self.text_depth, self.vision_depth)  # layers of the latent space
        self.n_text, self.n_local, self.n_global = cfg.dgl_text_prompts, cfg.dgl_local_prompts, cfg.dgl_global_prompts
        self.frames = cfg.dgl_max_frames
        self.schedule = None if cfg.merge == "none" else parse_schedule(cfg.merge, self.vision_layers)
        if self.schedule is not None:
            clips_after(self.schedule, cfg.frames)  # before any file is written
        latent = cfg.dgl_latent_dim or self.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.dgl_latent == "linear":
                bound = math.sqrt(6.0 / (3 * patch * patch + latent))
                self.latent = _uniform((self.layers, self.n_local, latent), bound)
                groups = self.n_text // self.n_local
                self.text_proj = nn.Linear(latent, groups * self.text_width) if groups else None
            else:
                self.latent = nn.Parameter(torch.randn(self.layers, self.n_text + self.n_local * self.frames, latent))
                self.prompt_block = ResidualAttentionBlock(latent, max(1, latent // 64))
                self.text_mlp = nn.Sequential(nn.Linear(latent, 2 * latent), QuickGELU(),
                                              nn.Linear(2 * latent, self.text_width)) if self.n_text else None
            self.to_visual = nn.Identity() if latent == self.width else nn.Linear(latent, self.width)
            bound = math.sqrt(6.0 / (3 * patch * patch + self.width))
            self.global_prompts = _uniform((self.n_global, self.width), bound)
            self.temporal = nn.Parameter(torch.randn(self.frames, self.width) * 0.02) if cfg.dgl_temporal else None
        self.to(backbone.device)

    # -- prompts ---------------------------------------------------------------------------

    def prompts(self, frames: int) -> tuple[Tensor | None, Tensor]:
        """Every layer's prompts from the shared latent space: text (layers, n_text, text_width) or
        None, local (layers, frames, n_local, width) with the frame-index embedding added."""
        if frames > self.frames:
            raise CptError(f"this DGL model takes at most {self.frames} frames a video (--dgl-max-frames); "
                           f"got {frames}.")
        if self.cfg.dgl_latent == "linear":
            z = self.latent  # (layers, n_local, latent)
            text = None
            if self.text_proj is not None:  # group g's tokens are projection g of every latent vector
                text = self.text_proj(z).view(self.layers, self.n_local, -1, self.text_width).transpose(1, 2)
                text = text.reshape(self.layers, self.n_text, self.text_width)
            local = self.to_visual(z)[:, None].expand(-1, frames, -1, -1)
        else:
            out = self.prompt_block(self.latent.transpose(0, 1)).transpose(0, 1)  # tokens of each layer together
            text = self.text_mlp(out[:, :self.n_text]) if self.text_mlp is not None else None
            local = self.to_visual(out[:, self.n_text:]).view(self.layers, self.frames, self.n_local, self.width)
            local = local[:, :frames]
        if self.temporal is not None:
            local = local + self.temporal[:frames, None]
        return text, local

    # -- text ------------------------------------------------------------------------------

    def encode_text(self, tokens: Tensor) -> Tensor:
        model = self.backbone.model
        dtype = model.dtype  # the image encoder's: fp16 weights keep an fp32 token embedding
        text, _ = self.prompts(1)
        eot = tokens.argmax(dim=-1)  # EOT has the largest id
        length = int(eot.max()) + 1  # later positions cannot reach any EOT (causal)
        x = (model.token_embedding(tokens).to(dtype) + model.positional_embedding.to(dtype))[:, :length]
        n = tokens.shape[0]  # not len(): traced exports take any batch
        k = self.n_text
        mask = torch.full((length + k, length + k), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        for i, block in enumerate(model.transformer.resblocks):
            if k and i < self.text_depth:
                p = text[i].to(dtype)[None].expand(n, -1, -1)
                x = torch.cat([x[:, :1], p, x[:, 1 if i == 0 else 1 + k:]], dim=1)
            h = block.ln_1(x).transpose(0, 1)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0].transpose(0, 1)
            x = x + block.mlp(block.ln_2(x))
        x = model.ln_final(x[torch.arange(n, device=x.device), eot + k]) @ model.text_projection
        return F.normalize(x.float(), dim=-1)

    # -- video -----------------------------------------------------------------------------

    def video_tokens(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """The image transformer's last hidden states: global prompts (b, n_global, width) and the
        clips' tokens (b, clips, tokens, width). Without --merge a clip is a frame, [class token, local
        prompts, patches]; with it, the clips the schedule leaves, each [class token and local prompts
        of each of its frames, in order, then its (merged) other tokens]."""
        visual = self.backbone.model.visual
        dtype = visual.conv1.weight.dtype
        b, t = video.shape[:2]
        if self.schedule is not None:
            clips_after(self.schedule, t)
        _, local = self.prompts(t)
        local = local.to(dtype)
        x = visual.conv1(video.flatten(0, 1).to(dtype))  # (b t, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(dtype).expand(x.shape[0], 1, -1)  # x.shape: traced exports take any batch
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(dtype))
        frames = torch.cat([x[:, :1], local[0].repeat(b, 1, 1), x[:, 1:]], dim=1)  # (b t, tokens, width)
        glob = self.global_prompts.to(dtype)[None].expand(b, -1, -1)
        size = None if self.schedule is None else torch.ones_like(frames[..., :1])
        f = 1  # frames a clip holds
        for i, block in enumerate(visual.transformer.resblocks):
            merge = NONE if self.schedule is None else self.schedule[i]
            if merge.clips > 1:  # TempMe's cross-clip step
                frames, size, _ = join_and_merge(frames, size, frames.detach(), merge, self._kept(f))
                f *= merge.clips
            if 0 < i < self.vision_depth:
                frames = self._new_prompts(frames, local[i], b, f)
            frames, glob, size = self._block(block, frames, glob, size, b, f, merge)
        return glob, frames.view(b, -1, *frames.shape[1:])

    def _kept(self, f: int) -> int:
        """Leading tokens of a clip of f frames that are never merged: each frame's class token and
        local prompts."""
        return f * (1 + self.n_local)

    def _new_prompts(self, frames: Tensor, local: Tensor, b: int, f: int) -> Tensor:
        """The layer's local prompts (t, n_local, width) in place of the previous layer's."""
        m = self.n_local
        if f == 1:
            return torch.cat([frames[:, :1], local.repeat(b, 1, 1), frames[:, 1 + m:]], dim=1)
        head = frames[:, :self._kept(f)].unflatten(1, (f, 1 + m))  # (n, f, 1 + m, width)
        prompts = local.unflatten(0, (-1, f)).repeat(b, 1, 1, 1)  # (b clips, f, m, width)
        return torch.cat([torch.cat([head[:, :, :1], prompts], dim=2).flatten(1, 2), frames[:, self._kept(f):]], dim=1)

    def _block(self, block: nn.Module, frames: Tensor, glob: Tensor, size: Tensor | None, b: int, f: int,
               merge: LayerMerge) -> tuple[Tensor, Tensor, Tensor | None]:
        """One frozen block with the global-local attention (or its ablation); with token sizes
        (--merge), proportional attention and the schedule's merge after attention."""
        hf, hg = block.ln_1(frames), block.ln_1(glob)
        tokens = hf.shape[1]
        c = hf.shape[0] // b  # clips a video
        if size is None:
            if self.cfg.dgl_no_global_local:
                af = _attend(block, hf, hf)
                ag = _attend(block, hg, torch.cat([hg, hf[:, 0].reshape(b, c, -1)], dim=1))
            else:
                af = _attend(block, hf, torch.cat([hg.repeat_interleave(c, dim=0), hf], dim=1))
                ag = _attend(block, hg, torch.cat([hg, hf.reshape(b, c * tokens, -1)], dim=1))
        else:
            ones = torch.ones_like(hg[..., :1])
            if self.cfg.dgl_no_global_local:
                af, keys = attend_to(block, hf, hf, size)
                cls = hf[:, :self._kept(f)].unflatten(1, (f, -1))[:, :, 0].reshape(b, c * f, -1)
                ag, _ = attend_to(block, hg, torch.cat([hg, cls], dim=1))
            else:
                af, keys = attend_to(block, hf, torch.cat([hg.repeat_interleave(c, dim=0), hf], dim=1),
                                     torch.cat([ones.repeat_interleave(c, dim=0), size], dim=1))
                keys = keys[:, self.n_global:]
                ag, _ = attend_to(block, hg, torch.cat([hg, hf.reshape(b, c * tokens, -1)], dim=1),
                                  torch.cat([ones, size.reshape(b, c * tokens, 1)], dim=1))
        frames, glob = frames + af, glob + ag
        if size is not None:
            frames, size = merge_after_attention(frames, size, keys, merge, self._kept(f))
        return frames + block.mlp(block.ln_2(frames)), glob + block.mlp(block.ln_2(glob)), size

    def encode_video(self, video: Tensor) -> Tensor:
        visual = self.backbone.model.visual
        glob, _ = self.video_tokens(video)
        return F.normalize((visual.ln_post(glob[:, 0]) @ visual.proj).float(), dim=-1)
