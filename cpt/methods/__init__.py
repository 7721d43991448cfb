"""Methods by name. Each module below registers its method with `@register`; adding a method
is one module plus one line here."""

from cpt.methods.base import Classifier, Method, Preset, PromptMethod, TaskData
from cpt.methods.registry import METHODS, build_method, method_class, register
from cpt.methods import zeroshot, linear_probe, lpp, tip_adapter, coop, kgcoop, softcpt, scpnet, retrieval, maple  # noqa: E402,F401,I001  (they register)

__all__ = ["METHODS", "build_method", "method_class", "register", "Classifier", "Method", "Preset", "PromptMethod",
           "TaskData"]
