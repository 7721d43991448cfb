"""Task kinds by name: single-label and multi-label classification, text-video retrieval."""

from cpt.errors import CptError
from cpt.kinds.base import Evaluation, Task, TaskKind
from cpt.kinds.multi_label import MultiLabel
from cpt.kinds.retrieval import Retrieval
from cpt.kinds.single_label import SingleLabel

KINDS: dict[str, TaskKind] = {k.name: k for k in (SingleLabel(), MultiLabel(), Retrieval())}


def kind(name: str) -> TaskKind:
    """The task kind `name`."""
    if name not in KINDS:
        raise CptError(f"Unknown task kind {name!r}; cpt knows {', '.join(KINDS)}.")
    return KINDS[name]


__all__ = ["KINDS", "Evaluation", "Task", "TaskKind", "kind"]
