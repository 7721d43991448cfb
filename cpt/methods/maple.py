"""MaPLe (Khattak, Rasheed, Maaz, Khan, Khan, CVPR 2023): multi-modal prompt learning; reference
code github.com/muzairkhattak/multimodal-prompt-learning (trainers/maple.py, clip/model.py).

CLIP stays frozen; what trains is `n_ctx` prompt tokens in each of the first `prompt_depth`
layers of both encoders, the vision prompts made from the text prompts (the coupling):

- text: the prompt is `[SOS] ctx <fixed words> <class name>. [EOS]`. `ctx` starts as the first
  `n_ctx` tokens of --prompt-init ("a photo" of "a photo of a"); the rest of its words stay fixed
  ("of a"), as the authors' prompt is "a photo of a {}.". Before each later layer l < depth, the
  layer's own learned prompts (N(0, 0.02)) replace the previous layer's outputs at the context
  positions, without positional embedding.
- vision: layer l's prompts are a linear map (text width -> image width) of layer l's text
  prompts: `ctx` for layer 0, appended after the patch tokens (ln_pre applied to them as to the
  rest, no positional embedding); before each later layer l < depth they replace the previous
  layer's outputs at those positions. The feature is the class token's, through ln_post and proj.
  The coupling functions are the reference's: layer 0's its own nn.Linear, the deeper layers'
  copies of one nn.Linear (all the same at the start).

So gradients of the image side reach the text prompts through the coupling. The image
encoder's output changes with training, so images are encoded every step (`tunes_image`) and
evaluation, export and prediction run this prompted encoder (`image_encoder`).

Deviations from the reference, and why:

- precision: fp32 throughout (the reference runs CLIP in fp16): gradients pass through the
  image encoder, as with scpnet's --finetune-image.
- depth is capped at each encoder's layers (the reference assumes 12); widths are read from the
  model (it hard-codes 512 and 768).
- several tasks share one set of prompts (there is one image encoder); each task has its own
  class prompts, and the loss is the mean over the mixed batch (as coop-shared).
- an --n-ctx above the number of tokens of --prompt-init is refused (the reference silently
  starts from a random context when --n-ctx exceeds 4).
- training views come from cpt's fixed --aug-views random crops + flips per image (seeded by the
  image and view), not a fresh crop every step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.core.backbone import Backbone
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context, n_ctx_option
from cpt.core.text import encode_embeddings, word_ids
from cpt.errors import CptError
from cpt.methods.base import Preset, PromptMethod, preset_table
from cpt.methods.coop import PAPER_TRAINING
from cpt.methods.registry import register
from cpt.methods.retrieval.base import require_vit
from cpt.options import Options, option

PANEL = "MaPLe"
EPOCHS = 5
# configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: CoOp's SGD and schedule at lr 0.0035, batch 4
MAPLE_TRAINING = {**PAPER_TRAINING, "lr": 0.0035, "batch_size": 4}


@dataclass
class MaPLeConfig(Options):
    """MaPLe's defaults: 2 context tokens from "a photo of a", prompts in the first 9 layers."""

    n_ctx: int = n_ctx_option(2)
    prompt_init: str = option("a photo of a", "MaPLe: the prompt's opening words; its first --n-ctx tokens start the "
                              "learned context, the rest stay fixed before the class name (empty: a random context).",
                              panel=PANEL)
    prompt_depth: int = option(9, "MaPLe: layers, from the first, whose prompts are learned in both encoders (1: the "
                               "first layer's only); capped at each encoder's layers.", panel=PANEL, low=1)
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        tokens = len(word_ids(self.prompt_init)) if self.prompt_init else self.n_ctx
        if self.n_ctx > tokens:
            raise CptError(f"--n-ctx {self.n_ctx} is more than the {tokens} tokens of --prompt-init "
                           f"{self.prompt_init!r}: give more words, a smaller --n-ctx, or --prompt-init '' for a "
                           "random context.")

    def prompt_config(self) -> PromptConfig:
        """The class prompts' layout: every word of --prompt-init in the context slots (or --n-ctx
        placeholders), the class name at the end."""
        return PromptConfig(n_ctx=self.n_ctx, ctx_init=self.prompt_init, init_std=self.init_std)


class CoupledPrompts(nn.Module):
    """The learned prompts: the text context of every prompted layer, and the coupling functions
    that map each layer's text prompts to its vision prompts."""

    def __init__(self, ctx: Tensor, layers: int, image_layers: int, image_width: int, std: float) -> None:
        super().__init__()
        n_ctx, width = ctx.shape
        self.ctx = nn.Parameter(ctx)  # (n_ctx, text width): layer 0's, among the token embeddings
        self.deep = nn.Parameter(torch.randn(layers - 1, n_ctx, width) * std)  # layers 1 .. layers-1
        shared = nn.Linear(width, image_width)
        self.couple = nn.ModuleList([nn.Linear(width, image_width),
                                     *(copy.deepcopy(shared) for _ in range(image_layers - 1))])

    def vision(self) -> Tensor:
        """(image layers, n_ctx, image width): each prompted image layer's prompts, coupled from its text prompts."""
        text = torch.cat([self.ctx[None], self.deep])
        return torch.stack([couple(t) for couple, t in zip(self.couple, text)])


def encode_prompted_image(visual: nn.Module, pixels: Tensor, prompts: Tensor) -> Tensor:
    """CLIP's ViT features (n, embed_dim) of pixels (n, 3, H, W) with vision prompts (layers, n_ctx,
    width): layer 0's appended after the patch tokens before ln_pre, each later layer's in place of
    the previous layer's outputs at those positions."""
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(pixels.to(dtype)).flatten(2).transpose(1, 2)  # (n, grid^2, width)
    n, k = x.shape[0], prompts.shape[1]  # x.shape: traced exports take any batch
    prompts = prompts.to(dtype)
    x = torch.cat([visual.class_embedding.to(dtype).expand(n, 1, -1), x], dim=1) + visual.positional_embedding.to(dtype)
    x = visual.ln_pre(torch.cat([x, prompts[0].expand(n, -1, -1)], dim=1)).transpose(0, 1)  # (tokens, n, width)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts):
            x = torch.cat([x[:-k], prompts[i][:, None].expand(-1, n, -1)])
        x = block(x)
    return visual.ln_post(x[0]) @ visual.proj


class PromptedImageEncoder(nn.Module):
    """The frozen ViT reading the prompts coupled from the learned ones (held, not copied: it follows training)."""

    def __init__(self, visual: nn.Module, prompts: CoupledPrompts) -> None:
        super().__init__()
        self.visual = visual
        self.prompts = prompts

    def forward(self, pixels: Tensor) -> Tensor:
        return encode_prompted_image(self.visual, pixels, self.prompts.vision())


@register
class MaPLe(PromptMethod):
    """Deep prompts in both encoders, the vision prompts linear maps of the text prompts."""

    name = "maple"
    Config = MaPLeConfig
    summary = ("MaPLe: deep prompts in both encoders, the image side's coupled from the text side's (Khattak et al., "
               "CVPR 2023); one set of prompts for all tasks.")
    kinds = ("single-label",)
    image_features = "encoded every step (prompts in the frozen image encoder)"
    task_mean = False  # one set of prompts for every task: the mean over the mixed batch
    defaults = MAPLE_TRAINING
    presets = preset_table(Preset(
        "maple-paper",
        "MaPLe's few-shot recipe (CVPR 2023): SGD lr 0.0035, batch 4, 5 epochs, one warm-up epoch at 1e-5 then cosine, "
        "the last epoch's model; 2 context tokens from 'a photo of a', prompts in the first 9 layers (cpt's maple "
        "defaults). The authors train in fp16 (TRAINER.MAPLE.PREC); cpt trains MaPLe in fp32.",
        "muzairkhattak/multimodal-prompt-learning: configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml, "
        "trainers/maple.py, clip/model.py; Dassl's dassl/config/defaults.py",
        {**MAPLE_TRAINING, "epochs": EPOCHS, "n_ctx": 2, "prompt_init": "a photo of a", "prompt_depth": 9},
    ))

    @classmethod
    def check(cls, cfg: MaPLeConfig, kind: str, settings: dict[str, Any]) -> None:
        if settings.get("precision", "fp32") != "fp32":
            raise CptError("--method maple trains through the image encoder in fp32; drop --precision.")

    @classmethod
    def default_epochs(cls, shots: int | None, kind: str) -> int:
        return EPOCHS

    @classmethod
    def transfers(cls, cfg: MaPLeConfig) -> bool:
        return True  # its prompts hold no class: the base-to-new protocol of its paper

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: MaPLeConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        model = backbone.model
        require_vit(backbone, "maple needs a ViT CLIP (its prompts go into the image transformer)")
        self.text_depth = min(cfg.prompt_depth, len(model.transformer.resblocks))
        image_depth = min(cfg.prompt_depth, len(model.visual.transformer.resblocks))
        layout = cfg.prompt_config()
        self.prompts = nn.ModuleList(ClassPrompts(model, names, layout) for names in classnames)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            ctx = init_context(self.prompts[0], layout, torch.Generator().manual_seed(cfg.seed))[: cfg.n_ctx]
            self.learner = CoupledPrompts(ctx.float().cpu(), max(self.text_depth, image_depth), image_depth,
                                          model.visual.conv1.weight.shape[0], cfg.init_std)
        self.learner.to(backbone.device)

    def tunes_image(self) -> bool:
        return True

    def image_encoder(self) -> nn.Module:
        return PromptedImageEncoder(self.backbone.model.visual, self.learner)

    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        prompts, n = self.prompts[task], self.cfg.n_ctx
        ctx = torch.cat([self.learner.ctx, prompts.init_ctx[n:]])  # the learned tokens, then the fixed words
        deep = self.learner.deep

        def layer_prompts(i: int, x: Tensor) -> Tensor:  # x: (n_cls, L, width), the context at 1 .. n
            if not 0 < i < self.text_depth:
                return x
            return torch.cat([x[:, :1], deep[i - 1].to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1 + n:]], dim=1)

        eot = prompts.eot if classes is None else prompts.eot[classes]
        feats = encode_embeddings(self.backbone.model, prompts.fill(ctx, classes), eot, deep=layer_prompts)
        return F.normalize(feats.float(), dim=-1)  # (n_cls, dim)

    def load_state(self, state: dict[str, Tensor]) -> None:
        super().load_state(state)
        self.backbone.mark_image_tuned(self.image_encoder())
