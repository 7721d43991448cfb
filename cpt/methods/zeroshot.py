"""Zero-shot CLIP: class embeddings from hand-written prompt templates."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cpt.backbone import Backbone
from cpt.errors import CptError
from cpt.methods.base import Classifier, Method
from cpt.text import encode_tokens, tokenize

# The seven ImageNet templates the CLIP authors selected for a small, strong ensemble.
ENSEMBLE = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]
DEFAULT_TEMPLATE = "a photo of a {}."


def resolve_templates(templates: list[str]) -> list[str]:
    """`ensemble` expands to CLIP's selected ensemble; each template needs one `{}`."""
    out: list[str] = []
    for t in templates or [DEFAULT_TEMPLATE]:
        out.extend(ENSEMBLE if t == "ensemble" else [t])
    for t in out:
        if t.count("{}") != 1:
            raise CptError(f"Template {t!r} must contain exactly one '{{}}' where the class name goes.")
    return out


@torch.no_grad()
def template_embeddings(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Normalised class embeddings (n_cls, dim): mean of normalised template features, renormalised."""
    model = backbone.model
    texts = [t.format(c) for c in classnames for t in templates]
    feats = F.normalize(encode_tokens(model, tokenize(texts, model)).float(), dim=-1)
    feats = feats.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1).cpu()


@dataclass
class ZeroShotConfig:
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])

    def __post_init__(self) -> None:
        self.templates = resolve_templates(self.templates)


class ZeroShot(Method):
    """No training: the classifier is CLIP's text embedding of each templated class name."""

    name = "zeroshot"
    Config = ZeroShotConfig

    def classifiers(self) -> list[Classifier]:
        return [
            Classifier(template_embeddings(self.backbone, names, self.cfg.templates), self.logit_scale())
            for names in self.classnames
        ]
