"""CoOp (Zhou et al., IJCV 2022): learn the prompt's context vectors.

`coop` learns one context per task (CoOp-CA when several tasks are given; `--class-specific`
for CoOp-CS), `coop-shared` one context for all tasks (CoOp-MT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.core.backbone import Backbone
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context
from cpt.methods.base import Preset, PromptMethod, preset_table
from cpt.methods.registry import register

# CoOp's optimisation as CoOp's and SoftCPT's configs share it (Dassl's defaults: momentum 0.9, weight decay 5e-4,
# the last epoch's model); a method's own preset adds its prompt settings.
PAPER_TRAINING = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 32,
                  "schedule": "cosine", "warmup_epochs": 1, "ema_decay": 0.0, "select": "last"}
FP16 = ("The authors run CLIP in fp16 (TRAINER.{}.PREC); --precision is a run setting the preset leaves alone: add "
        "--precision fp16 to match.")


@dataclass
class CoOpConfig(PromptConfig):
    """CoOp's defaults: 16 random context tokens, shared by the classes, class name at the end."""

    seed: int = 0


def coop_epochs(shots: int | None) -> int:
    """CoOp's epoch budget by shots: 50 for 1 shot, 100 for 2-4, 200 for 8+ (and for all data)."""
    if shots == 1:
        return 50
    if shots is not None and 2 <= shots <= 4:
        return 100
    return 200


@register
class CoOp(PromptMethod):
    """Each task gets its own context (CoOp-CA when several tasks are given)."""

    name = "coop"
    Config = CoOpConfig
    summary = ("CoOp: learned prompt context (Zhou et al., IJCV 2022); a context per task (CoOp-CA), "
               "--class-specific for CoOp-CS; the asymmetric loss on multi-label tasks.")

    shared = False  # one context for every task (CoOp-MT) instead of one per task
    excludes = {"single_positive": "it needs a loss for unobserved negatives: use --method scpnet (SPLC loss)"}
    presets = preset_table(Preset(
        "coop-paper",
        "CoOp's few-shot recipe (IJCV 2022): SGD lr 0.002, batch 32, one warm-up epoch at 1e-5 then cosine, 16 random "
        "context tokens, class name at the end; epochs by shots 50 / 100 / 200 for 1 / 2-4 / 8+ (cpt's coop default, "
        "left to it). " + FP16.format("COOP"),
        "KaiyangZhou/CoOp: configs/trainers/CoOp/rn50_ep50.yaml, rn50_ep100.yaml, rn50.yaml, scripts/coop/main.sh, "
        "COOP.md, train.py; Dassl's dassl/config/defaults.py",
        {**PAPER_TRAINING, "n_ctx": 16, "ctx_init": "", "class_token_position": "end"},
    ))

    @classmethod
    def default_epochs(cls, shots: int | None, kind: str) -> int:
        return coop_epochs(shots) if kind == "single-label" and not cls.shared else 50

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: CoOpConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.prompts = nn.ModuleList(ClassPrompts(backbone.model, names, cfg) for names in classnames)
        owners = self.prompts[:1] if self.shared else self.prompts
        self.ctx = nn.ParameterList(nn.Parameter(init_context(p, cfg, generator).float()) for p in owners)

    @classmethod
    def transfers(cls, cfg: CoOpConfig) -> bool:
        return not cfg.class_specific

    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        ctx = self.ctx[0 if self.shared else task]
        feats = self.prompts[task].encode(self.backbone.model, ctx, classes)  # (n_cls, dim)
        return F.normalize(feats.float(), dim=-1)


@register
class CoOpShared(CoOp):
    """CoOp-MT: a single context learned jointly on all tasks (hard sharing)."""

    name = "coop-shared"
    summary = "CoOp-MT: one CoOp context learned jointly on all tasks (the SoftCPT paper's hard-sharing baseline)."
    kinds = ("single-label",)
    excludes = {"class_specific": "coop-shared shares one context across tasks"}
    presets = {}
    shared = True
    task_mean = False
