"""Method registry: `--method NAME` looks a method up here, and `--help` lists these names."""

from typing import Any

from cpt.backbone import Backbone
from cpt.errors import CptError
from cpt.methods.base import Classifier, Method, PromptMethod, TaskData, config_from
from cpt.methods.coop import CoOp, CoOpShared
from cpt.methods.linear_probe import LinearProbe
from cpt.methods.scpnet import SCPNet
from cpt.methods.softcpt import SoftCPT
from cpt.methods.zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = {m.name: m for m in (ZeroShot, LinearProbe, CoOp, CoOpShared, SoftCPT, SCPNet)}


def method_class(name: str) -> type[Method]:
    """The registered method `name`, or a user error listing the names."""
    if name not in METHODS:
        raise CptError(f"--method {name!r} is unknown; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def build_method(name: str, backbone: Backbone, classnames: list[list[str]], options: dict[str, Any],
                 titles: list[str] | None = None) -> Method:
    """Instantiate method `name`, its config taken from the matching keys of `options`."""
    cls = method_class(name)
    return cls(backbone, classnames, config_from(cls.Config, options), titles)

__all__ = ["METHODS", "build_method", "method_class", "Classifier", "Method", "PromptMethod", "TaskData", "config_from"]
