"""CoOp (Zhou et al., IJCV 2022): learn the prompt's context vectors.

`coop` learns one context per task (CoOp-CA when several tasks are given; `--class-specific`
for CoOp-CS), `coop-shared` one context for all tasks (CoOp-MT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.backbone import Backbone
from cpt.errors import CptError
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

    shared = False  # one context for every task (CoOp-MT) instead of one per task

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: CoOpConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.prompts = nn.ModuleList(ClassPrompts(backbone.model, names, cfg) for names in classnames)
        if self.shared and cfg.class_specific:
            raise CptError("coop-shared shares one context across tasks; --class-specific does not apply.")
        owners = self.prompts[:1] if self.shared else self.prompts
        self.ctx = nn.ParameterList(nn.Parameter(init_context(p, cfg, generator).float()) for p in owners)

    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        ctx = self.ctx[0 if self.shared else task]
        feats = self.prompts[task].encode(self.backbone.model, ctx, classes)  # (n_cls, dim)
        return F.normalize(feats.float(), dim=-1)


class CoOpShared(CoOp):
    """CoOp-MT: a single context learned jointly on all tasks (hard sharing)."""

    name = "coop-shared"
    shared = True
    task_mean = False
