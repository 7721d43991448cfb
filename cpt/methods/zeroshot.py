"""Zero-shot CLIP: class embeddings from hand-written prompt templates."""

from __future__ import annotations

from dataclasses import dataclass

from cpt.core.templates import DEFAULT_TEMPLATE, resolve_templates, template_embeddings
from cpt.methods.base import Classifier, Method
from cpt.methods.registry import register
from cpt.options import Options, option


@dataclass
class ZeroShotConfig(Options):
    template: list[str] = option([DEFAULT_TEMPLATE], "Prompt template with {} for the class name (repeatable), or "
                                 "'ensemble' for CLIP's 7-template ensemble.", panel="Zero-shot")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.template = resolve_templates(self.template)


@register
class ZeroShot(Method):
    """No training: the classifier is CLIP's text embedding of each templated class name."""

    name = "zeroshot"
    Config = ZeroShotConfig
    summary = "Zero-shot CLIP from prompt templates (Radford et al., ICML 2021)."

    @classmethod
    def transfers(cls, cfg: ZeroShotConfig) -> bool:
        return True

    def classifiers(self) -> list[Classifier]:
        return [
            Classifier(template_embeddings(self.backbone, names, self.cfg.template), self.logit_scale())
            for names in self.classnames
        ]
