"""CoOp (Zhou et al., IJCV 2022): learn the prompt's context vectors, one context per task."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.backbone import Backbone
from cpt.methods.base import PromptMethod
from cpt.prompt import ClassPrompts, PromptConfig, init_context


@dataclass
class CoOpConfig(PromptConfig):
    """CoOp's defaults: 16 random context tokens, shared by the classes, class name at the end."""

    seed: int = 0


class CoOp(PromptMethod):
    """Each task gets its own context (CoOp-CA when several tasks are given)."""

    name = "coop"
    Config = CoOpConfig

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: CoOpConfig) -> None:
        super().__init__(backbone, classnames, cfg)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.prompts = nn.ModuleList(ClassPrompts(backbone.model, names, cfg) for names in classnames)
        self.ctx = nn.ParameterList(nn.Parameter(init_context(p, cfg, generator).float()) for p in self.prompts)

    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        feats = self.prompts[task].encode(self.backbone.model, self.ctx[task], classes)  # (n_cls, dim)
        return F.normalize(feats.float(), dim=-1)
