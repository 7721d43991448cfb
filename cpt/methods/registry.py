"""The method registry: `@register` adds a method class; every list a user sees comes from here."""

from __future__ import annotations

from typing import Any

from cpt.core.backbone import Backbone
from cpt.errors import CptError
from cpt.methods.base import Method
from cpt.options import build

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` available as `--method cls.name`."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered method `name`, or a user error listing the names."""
    if name not in METHODS:
        raise CptError(f"--method {name!r} is unknown; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def build_method(name: str, backbone: Backbone, classnames: list[list[str]], options: dict[str, Any],
                 titles: list[str] | None = None) -> Method:
    """Instantiate method `name`, its config taken from the matching keys of `options`."""
    cls = method_class(name)
    return cls(backbone, classnames, build(cls.Config, options), titles)
