"""KgCoOp (Yao, Zhang, Xu, CVPR 2023): CoOp kept close to the hand-crafted prompt.

CoOp's loss plus a knowledge-guided term: 1 - the mean, over the classes the logits cover, of
the cosine between each class's learned-prompt text feature and the frozen feature of its
hand-crafted prompt ("a photo of a {}."), weighted by `kg_weight` (8 in the authors' scripts).
The learned context starts from "a photo of a", so training starts at zero-shot CLIP's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from cpt.core.backbone import Backbone
from cpt.core.prompt import ctx_init_option, n_ctx_option
from cpt.core.templates import DEFAULT_TEMPLATE, resolve_templates, template_embeddings
from cpt.methods.base import Preset, preset_table
from cpt.methods.coop import FP16, PAPER_TRAINING, CoOp, CoOpConfig
from cpt.methods.registry import register
from cpt.options import option

PANEL = "KgCoOp"
EPOCHS = 100  # the authors' configs (rn50_ep100, vit_b16_ep100_ctxv1), at every shot count


@dataclass
class KgCoOpConfig(CoOpConfig):
    """KgCoOp's defaults: 4 context tokens initialised from "a photo of a", weight 8."""

    n_ctx: int = n_ctx_option(4)
    ctx_init: str = ctx_init_option("a photo of a")
    kg_weight: float = option(8.0, "Weight of the knowledge-guided term: 1 - mean cosine between the learned and the "
                              "hand-crafted prompts' class features (0: CoOp).", panel=PANEL, low=0)
    kg_template: list[str] = option([DEFAULT_TEMPLATE], "The hand-crafted prompt the learned one is kept close to, "
                                    "with {} for the class name (repeatable: their mean feature), or 'ensemble' for "
                                    "CLIP's 7 templates.", panel=PANEL)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kg_template = resolve_templates(self.kg_template)


def knowledge_term(prompt_features: Tensor, anchors: Tensor) -> Tensor:
    """1 - mean cosine between rows of (n_cls, dim) learned-prompt features and their (n_cls, dim) anchors."""
    return 1 - F.cosine_similarity(prompt_features, anchors, dim=-1).mean()


@register
class KgCoOp(CoOp):
    """CoOp whose class features are pulled towards the hand-crafted prompt's."""

    name = "kgcoop"
    Config = KgCoOpConfig
    summary = ("KgCoOp: CoOp plus a term keeping the learned prompts' class features near the hand-crafted prompt's "
               "(Yao, Zhang, Xu, CVPR 2023).")
    presets = preset_table(Preset(
        "kgcoop-paper",
        "KgCoOp's recipe (CVPR 2023): SGD lr 0.002, batch 128, 100 epochs, one warm-up epoch at 1e-5 then cosine, the "
        "last epoch's model; 4 context tokens from 'a photo of a', class name at the end; weight 8 on 1 - mean cosine "
        "to 'a photo of a {}.'. The authors' template depends on the data set (trainers/kgcoop.py CUSTOM_TEMPLATES, "
        "e.g. 'a photo of a {}, a type of pet.' for Oxford Pets): pass it as --kg-template. " + FP16.format("COOP"),
        "htyao89/KgCoOp: KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, rn50_ep100.yaml, "
        "scripts/base2new_train.sh, scripts/run.sh, trainers/kgcoop.py, train.py; Dassl.ProGrad.pytorch "
        "dassl/config/defaults.py",
        {**PAPER_TRAINING, "batch_size": 128, "epochs": EPOCHS, "n_ctx": 4, "ctx_init": "a photo of a",
         "class_token_position": "end", "kg_weight": 8.0, "kg_template": [DEFAULT_TEMPLATE]},
    ))

    @classmethod
    def default_epochs(cls, shots: int | None, kind: str) -> int:
        return EPOCHS if kind == "single-label" else 50

    def __init__(self, backbone: Backbone, classnames: list[list[str]], cfg: KgCoOpConfig,
                 titles: list[str] | None = None) -> None:
        super().__init__(backbone, classnames, cfg, titles)
        # the hand-crafted prompts' normalised class features, per task (constant: not in the state)
        self.anchors = [template_embeddings(backbone, names, cfg.kg_template).to(backbone.device)
                        for names in classnames]

    def prompt_term(self, task: int, weight: Tensor, classes: Tensor | None) -> Tensor:
        """`kg_weight` x the knowledge-guided term over the classes the logits cover: added per image,
        so the train loop's mean over the task's images gives the authors' CE + W * term."""
        anchors = self.anchors[task] if classes is None else self.anchors[task][classes]
        return self.cfg.kg_weight * knowledge_term(weight, anchors)
