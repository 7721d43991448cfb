"""SoftCPT (Ding et al., "Prompt Tuning with Soft Context Sharing for Vision-Language Models").

A task prompt `[task ctx] <task name>.` goes through the frozen text encoder (EOT pooling) to
a task feature; a task-shared linear meta network (no bias, N(0, 0.02)) turns it into that
task's class-prompt context, so related tasks share knowledge softly. Variants:
  nata  one task context for all tasks (default)      nats  a task context per task
  cata / csta / cats / csts  class-feature variants: each class's own feature (from a
        4-token class context, shared (ca) or class-specific (cs)) is concatenated with
        its task's feature, so the meta network generates a context per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.core.backbone import Backbone
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context, n_ctx_option
from cpt.methods.base import Preset, PromptMethod, preset_table
from cpt.methods.coop import FP16, PAPER_TRAINING
from cpt.methods.registry import register
from cpt.options import Options, option

VARIANTS = ("nata", "nats", "cata", "csta", "cats", "csts")
PANEL = "SoftCPT"


@dataclass
class SoftCPTConfig(Options):
    """The paper's defaults: a 16-token generated context from 4-token task (and class) prompts."""

    n_ctx: int = n_ctx_option(16)
    variant: str = option("nata", "nata: one task context for all tasks; nats: one per task; cata, csta, cats, csts: "
                          "add each class's feature (shared or class-specific class context).", panel=PANEL,
                          choices=VARIANTS)
    task_n_ctx: int = option(4, "Context tokens of the task prompt.", panel=PANEL, low=1)
    class_n_ctx: int = option(4, "Class-feature variants: context tokens of the class prompt.", panel=PANEL, low=1)
    meta_init_std: float = 0.02
    seed: int = 0


@register
class SoftCPT(PromptMethod):
    """Meta network from task (and class) features to each task's prompt context."""

    name = "softcpt"
    kinds = ("single-label",)
    task_mean = False
    Config = SoftCPTConfig
    summary = ("SoftCPT: a task-shared meta network turns each task name into its prompt context "
               "(Ding et al., 2022, arXiv:2208.13474).")
    presets = preset_table(Preset(
        "softcpt-paper",
        "SoftCPT's published recipe: SGD lr 0.002, batch 32, 50 epochs, one warm-up epoch at 1e-5 then cosine, the "
        "last epoch's model; a linear meta network generating 16 context tokens from a 4-token task prompt (and a "
        "4-token class prompt in the class-feature variants). The class-feature variants on General-10 also sample "
        "10% of the other classes per step: add --class-sample-rate 0.1 (scripts/main_mtcoop_cls_sample.sh). "
        + FP16.format("MTCOOP"),
        "kding1225/softcpt: configs/trainers/MTCoOp/rn50_ep50.yaml, README.md (commands), scripts/main_mtcoop.sh, "
        "train.py; dist/Dassl.pytorch/dassl/config/defaults.py",
        {**PAPER_TRAINING, "epochs": 50, "n_ctx": 16, "task_n_ctx": 4, "class_n_ctx": 4, "variant": "nata"},
    ))

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: SoftCPTConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        model = backbone.model
        gen = torch.Generator().manual_seed(cfg.seed)
        self.task_specific = cfg.variant[2:] == "ts"
        self.class_features = cfg.variant[:2] in ("ca", "cs")
        # task prompts "[task ctx] <title>." share one context (ta) or have one each (ts)
        task_cfg = PromptConfig(n_ctx=cfg.task_n_ctx, class_specific=self.task_specific)
        self.task_prompts = ClassPrompts(model, self.titles, task_cfg)
        self.task_ctx = nn.Parameter(init_context(self.task_prompts, task_cfg, gen).float())
        if self.class_features:
            class_cfg = PromptConfig(n_ctx=cfg.class_n_ctx, class_specific=cfg.variant[:2] == "cs")
            self.class_prompts = nn.ModuleList(ClassPrompts(model, names, class_cfg) for names in classnames)
            # ca: one class context shared by every class of every task (as the reference);
            # cs: a context per class, so one tensor per task
            owners = self.class_prompts if class_cfg.class_specific else self.class_prompts[:1]
            self.class_ctx = nn.ParameterList(nn.Parameter(init_context(p, class_cfg, gen).float()) for p in owners)
        dim, width = model.text_projection.shape[1], model.transformer.width
        in_dim = 2 * dim if self.class_features else dim
        meta = torch.randn(in_dim, cfg.n_ctx * width, generator=gen) * cfg.meta_init_std
        self.meta = nn.Parameter(meta.to(model.positional_embedding.device))
        self.prompts = nn.ModuleList(ClassPrompts(model, names, PromptConfig(n_ctx=cfg.n_ctx)) for names in classnames)

    @classmethod
    def transfers(cls, cfg: SoftCPTConfig) -> bool:
        return cfg.variant[:2] != "cs"  # cs variants learn a context per class

    def task_features(self) -> Tensor:
        """(n_tasks, dim) features of the task prompts."""
        return self.task_prompts.encode(self.backbone.model, self.task_ctx).float()

    def generated_context(self, task: int, classes: Tensor | None = None) -> Tensor:
        """The task's context (n_ctx, width), or one per class (n, n_ctx, width) for class-feature variants."""
        width = self.backbone.model.transformer.width
        feat = self.task_features()[task]  # (dim,)
        if not self.class_features:
            return (feat @ self.meta).view(self.cfg.n_ctx, width)
        ctx = self.class_ctx[task if len(self.class_ctx) > 1 else 0]
        cls = self.class_prompts[task].encode(self.backbone.model, ctx, classes).float()  # (n, dim)
        joint = torch.cat([cls, feat.expand(len(cls), -1)], dim=1)  # (n, 2 dim)
        return (joint @ self.meta).view(len(cls), self.cfg.n_ctx, width)

    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        ctx = self.generated_context(task, classes)
        if ctx.dim() == 3 and classes is not None:
            feats = self._encode_selected(task, ctx, classes)
        else:
            feats = self.prompts[task].encode(self.backbone.model, ctx, classes)
        return F.normalize(feats.float(), dim=-1)

    def _encode_selected(self, task: int, ctx: Tensor, classes: Tensor) -> Tensor:
        """Class-specific generated context for a subset: scatter it into a full-size tensor first."""
        full = torch.zeros(self.prompts[task].n_cls, *ctx.shape[1:], dtype=ctx.dtype, device=ctx.device)
        full = full.index_copy(0, classes, ctx)
        return self.prompts[task].encode(self.backbone.model, full, classes)
