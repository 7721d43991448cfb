"""Zero-shot CLIP: class embeddings from hand-written prompt templates."""

from __future__ import annotations

from dataclasses import dataclass, field

from cpt.methods.base import Classifier, Method
from cpt.templates import DEFAULT_TEMPLATE, resolve_templates, template_embeddings


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
