"""SCPNet (Ding, Wang et al., CVPR 2023): multi-label recognition with incomplete labels.

One learned context ("a photo of a", 4 tokens) builds every class prompt; the text features
go through a graph module whose adjacency is the label prior from CLIP's own text encoder
(cpt.methods.scpnet.prior), with a residual. Training on cached image features:

- supervised: the asymmetric loss on the known entries of a weak view (SPLC when each
  image keeps a single positive);
- prior-enhanced self-training: on a second weak view, the top `hard_k` classes above
  class-adaptive thresholds (p_cutoff * a / (2 - a), `a` each class's share of the
  pseudo-labels selected so far, FlexMatch-style) become hard pseudo-labels, together with
  the observed positives; the strong (RandAugment) view is trained towards them (BCE) and
  towards the prior-calibrated soft targets sigmoid(weak) @ relation.T (weight kl_lambda);
  the whole term weighs lambda_u.

Ablations: `no_prior` (identity adjacency and relation), `no_gcn` (prompt features as they
are), `no_self_training` (the supervised loss alone). Logits use a fixed scale (10, the
reference's COCO setting) instead of CLIP's 100. `finetune_image` trains the image encoder
as well, as the paper does (its views are then encoded every step instead of cached).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt import dist
from cpt.core.backbone import Backbone
from cpt.core.prompt import ClassPrompts, PromptConfig, ctx_init_option, init_context, n_ctx_option
from cpt.data.features import STRONG_OPS, AugmentSpec, ViewOptions
from cpt.errors import CptError
from cpt.methods.base import PromptMethod, TaskData
from cpt.methods.losses import asymmetric_loss, splc_loss
from cpt.methods.registry import register
from cpt.methods.scpnet.graph import LabelGraph
from cpt.methods.scpnet.presets import SCPNET_PRESETS
from cpt.methods.scpnet.prior import PriorConfig, label_prior
from cpt.options import option

PANEL = "SCPNet"


@dataclass
class SCPNetConfig(PromptConfig):
    """SCPNet's defaults (its COCO configuration where it has one)."""

    n_ctx: int = n_ctx_option(4)
    ctx_init: str = ctx_init_option("a photo of a")
    logit_scale: float = option(10.0, "Fixed logit scale (SCPNet's COCO setting).", panel=PANEL, low=0, above=True)
    prior_template: str = option("a photo of a {}.", "Prior: template of the class-name embeddings.", panel=PANEL)
    topk: int | None = option(None, "Prior: neighbours kept per class [default: 78% of the classes, 62 of COCO's 80].",
                              panel=PANEL, low=1)
    reweight_p: float = option(0.2, "Prior: neighbour mass; the class itself keeps 1 - p.", panel=PANEL, low=0, high=1)
    temperature: float = option(0.2, "Prior: softmax temperature of the relation.", panel=PANEL, low=0, above=True)
    lambda_u: float = option(0.125, "Weight of the self-training term.", panel=PANEL, low=0)
    kl_lambda: float = option(1.0, "Weight of the prior-calibrated soft targets within it.", panel=PANEL, low=0)
    p_cutoff: float = option(0.95, "Pseudo-label confidence cut-off before class adaptation.", panel=PANEL, low=0,
                             high=1)
    hard_k: int = option(2, "Pseudo-label candidates per image.", panel=PANEL, low=1)
    no_prior: bool = option(False, "Ablation: no label prior (identity graph, uncalibrated soft targets).", panel=PANEL)
    no_gcn: bool = option(False, "Ablation: no graph module over the class features.", panel=PANEL)
    no_self_training: bool = option(False, "Ablation: the supervised loss only (no weak/strong self-training).",
                                    panel=PANEL)
    strong_augment: str = option("randaugment", "Strong view: 'randaugment' (3 ops, magnitude 5, as SCPNet) or "
                                 "'colour-safe' (no op that shifts hues, for colour labels; toy-ml's preset).",
                                 panel=PANEL, choices=tuple(STRONG_OPS))
    finetune_image: bool = option(False, "Train the image encoder too, as the paper does (slow: no feature cache for "
                                  "training).", panel=PANEL)
    image_lr_scale: float = option(0.1, "With --finetune-image: the image encoder's learning rate as a share of --lr.",
                                   panel=PANEL, low=0, above=True)
    graph_lr: float | None = option(None, "Peak learning rate of the graph module [default: --lr] (the reference's "
                                    "gcn_lr).", panel=PANEL, low=0, above=True)
    single_positive: bool = False  # set from the multi-label option: SPLC instead of ASL
    seed: int = 0


def class_thresholds(selected: Tensor, hard_k: int, p_cutoff: float) -> Tensor:
    """Per-class pseudo-label thresholds from the pseudo-labels selected so far (n, C)."""
    n, c = selected.shape
    counts = selected.sum(dim=0).float()
    share = torch.full((c,), 1 / c)
    if counts.max() >= 1:
        share = (counts / max(counts.max().item(), hard_k * n - counts.sum().item())).clamp(min=1 / c)
    return p_cutoff * share / (2 - share)


def pseudo_labels(probs: Tensor, thresholds: Tensor, hard_k: int, observed: Tensor) -> tuple[Tensor, Tensor]:
    """(labels (n, C) in {0, 1}, confident (n,)): each image's top `hard_k` classes that pass
    their threshold, plus its observed positives; confident if any top class passes."""
    top_p, top_i = probs.topk(min(hard_k, probs.shape[1]), dim=1)
    confident = (top_p >= thresholds[top_i]).any(dim=1)
    labels = torch.zeros_like(probs).scatter(1, top_i, 1.0)
    labels = torch.where(probs < thresholds, torch.zeros_like(labels), labels)
    return torch.maximum(labels, observed.float()), confident


def self_training_loss(strong_logits: Tensor, weak_probs: Tensor, labels: Tensor, confident: Tensor,
                       relation: Tensor, kl_lambda: float) -> Tensor:
    """BCE of the strong view towards the hard pseudo-labels plus `kl_lambda` x towards the
    prior-calibrated soft targets weak_probs @ relation.T, over confident images, summed.

    As the reference, probabilities are clamped at 1e-8 before the log (not logsigmoid): at a
    large logit scale a saturated sigmoid then costs at most -log(1e-8) = 18.4 per entry.
    """
    p = torch.sigmoid(strong_logits)
    log_p, log_not = torch.log(p.clamp(min=1e-8)), torch.log((1 - p).clamp(min=1e-8))
    soft = weak_probs @ relation.T
    hard_term = labels * log_p + (1 - labels) * log_not
    soft_term = soft * log_p + (1 - soft) * log_not
    return -((hard_term + kl_lambda * soft_term) * confident[:, None].float()).sum()


@register
class SCPNet(PromptMethod):
    """Prompt + label graph + prior-calibrated self-training, per task."""

    name = "scpnet"
    Config = SCPNetConfig
    summary = ("SCPNet: CLIP's label prior drives a graph module and prior-calibrated self-training, for "
               "partial labels (Ding, Wang et al., CVPR 2023).")
    kinds = ("multi-label",)
    uses = ("views", "strong")
    image_features = "cached; encoded every step with --finetune-image"
    excludes = {"class_specific": "scpnet learns one context shared by the classes"}
    presets = SCPNET_PRESETS

    @classmethod
    def check(cls, cfg: SCPNetConfig, kind: str, settings: dict[str, Any]) -> None:
        if cfg.finetune_image and settings.get("precision", "fp32") != "fp32":
            raise CptError("--finetune-image trains the image encoder in fp32; drop --precision.")

    def tunes_image(self) -> bool:
        return self.cfg.finetune_image

    def augmentations(self, views: ViewOptions) -> dict[str, AugmentSpec]:
        weak = super().augmentations(views)
        if self.cfg.no_self_training:
            return weak
        return {**weak, "strong": replace(weak["views"], strong=self.cfg.strong_augment)}

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: SCPNetConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.prompts = nn.ModuleList(ClassPrompts(backbone.model, names, cfg) for names in classnames)
        self.ctx = nn.ParameterList(nn.Parameter(init_context(p, cfg, generator).float()) for p in self.prompts)
        prior_cfg = PriorConfig(cfg.prior_template, cfg.topk, cfg.reweight_p, cfg.temperature)
        self.relations: list[Tensor] = []
        graphs = []
        dim = backbone.geometry["embed_dim"]
        for names in classnames:
            if cfg.no_prior:
                adjacency = relation = torch.eye(len(names))
            else:
                prior = label_prior(backbone, names, prior_cfg)
                adjacency, relation = prior.adjacency, prior.relation
            self.relations.append(relation.to(backbone.device))
            if not cfg.no_gcn:
                graphs.append(LabelGraph(dim, adjacency, generator).to(backbone.device))
        self.graphs = nn.ModuleList(graphs)
        self.selected: dict[int, Tensor] = {}  # per task: the latest pseudo-labels of every training image
        if cfg.finetune_image:
            self.visual = backbone.model.visual.float().requires_grad_(True)  # registered: saved in the state

    def param_groups(self, lr: float) -> list[dict]:
        """The prompt at `lr`; the graph module at --graph-lr when given; a trained image encoder at its share."""
        graph = list(self.graphs.parameters()) if self.cfg.graph_lr is not None else []
        image = list(self.visual.parameters()) if self.cfg.finetune_image else []
        apart = {id(p) for p in graph + image}
        groups = [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in apart], "lr": lr}]
        if graph:
            groups.append({"params": graph, "lr": self.cfg.graph_lr})
        if image:
            groups.append({"params": image, "lr": lr * self.cfg.image_lr_scale})
        return groups

    def logit_scale(self) -> float:
        return self.cfg.logit_scale

    def class_weights(self, task: int, classes: Tensor | None = None) -> Tensor:
        feats = self.prompts[task].encode(self.backbone.model, self.ctx[task]).float()  # (n_cls, dim)
        if not self.cfg.no_gcn:
            feats = self.graphs[task](feats)
        feats = F.normalize(feats, dim=-1)
        return feats if classes is None else feats[classes]

    def batch_loss(self, data: TaskData, task: int, rows: Tensor, classes: Tensor | None, epoch: int,
                   gen: torch.Generator, share: Tensor | None = None) -> Tensor:
        device = self.backbone.device
        n_views = data.train_views.shape[1]
        images, views = rows[:, 0], rows[:, 1]
        if not self.cfg.no_self_training:  # drawn for every row of the batch, whichever rank computes it
            other = (views + torch.randint(1, max(n_views, 2), (len(rows),), generator=gen)) % n_views
            pick = torch.randint(0, data.train_strong.shape[1], (len(rows),), generator=gen)
        mine = torch.ones(len(rows), dtype=torch.bool) if share is None else share
        targets = data.targets[images[mine]].to(device)
        weak = data.train_views[images[mine], views[mine]]
        if self.cfg.no_self_training:
            feats = weak
        else:
            feats = torch.cat([weak, data.train_views[images[mine], other[mine]],
                               data.train_strong[images[mine], pick[mine]]])
        weight = self.class_weights(task)
        logits = (self.logit_scale() * F.normalize(feats.to(device).float(), dim=-1) @ weight.T).float()
        n = len(targets)
        sup_logits = logits[:n]
        if self.cfg.single_positive:
            loss = splc_loss(sup_logits, targets, correct=epoch >= 1)
        else:
            loss = asymmetric_loss(sup_logits, targets)
        if self.cfg.no_self_training:
            return loss
        weak_logits, strong_logits = logits[n: 2 * n].detach(), logits[2 * n:]
        return loss + self.cfg.lambda_u * self._self_training(task, data, images, mine, weak_logits, strong_logits,
                                                              targets)

    def _self_training(self, task: int, data: TaskData, images: Tensor, mine: Tensor, weak_logits: Tensor,
                       strong_logits: Tensor, targets: Tensor) -> Tensor:
        """The self-training term of this rank's rows (`mine` among the batch's `images`); the
        pseudo-labels of the whole batch then update every rank's record of them alike."""
        selected = self.selected.setdefault(task, torch.zeros(len(data.targets), len(self.classnames[task]),
                                                              dtype=torch.uint8))
        thresholds = class_thresholds(selected, self.cfg.hard_k, self.cfg.p_cutoff).to(weak_logits.device)
        probs = torch.sigmoid(weak_logits)
        labels, confident = pseudo_labels(probs, thresholds, self.cfg.hard_k, targets.eq(1))
        batch = torch.zeros(len(images), selected.shape[1], dtype=torch.uint8)
        batch[mine] = labels.to(torch.uint8).cpu()
        batch = dist.rows_from_all(batch, mine)
        chosen = batch.sum(dim=1) >= 1
        selected[images[chosen]] = batch[chosen]
        return self_training_loss(strong_logits, probs, labels, confident, self.relations[task], self.cfg.kl_lambda)

    def state(self) -> dict[str, Tensor]:
        return {**super().state(), **{f"selected.{t}": s.clone() for t, s in self.selected.items()}}

    def load_state(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.selected = {int(k.split(".")[1]): state.pop(k).clone() for k in list(state) if k.startswith("selected.")}
        super().load_state(state)
        if self.cfg.finetune_image:
            self.backbone.mark_image_tuned()
