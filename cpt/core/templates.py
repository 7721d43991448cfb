"""Prompt templates and the class embeddings they give (zero-shot CLIP, the SCPNet prior)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cpt.core.backbone import Backbone
from cpt.errors import CptError
from cpt.core.text import encode_tokens, tokenize

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
