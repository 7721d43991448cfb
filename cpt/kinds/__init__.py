"""Task kinds by name: single-label and multi-label classification."""

from cpt.errors import CptError
from cpt.kinds.base import Evaluation, Task, TaskKind
from cpt.kinds.multi_label import MultiLabel
from cpt.kinds.single_label import SingleLabel

KINDS: dict[str, TaskKind] = {k.name: k for k in (SingleLabel(), MultiLabel())}


def kind(name: str) -> TaskKind:
    """The task kind `name`."""
    if name not in KINDS:
        raise CptError(f"Unknown task kind {name!r}; cpt knows {', '.join(KINDS)}.")
    return KINDS[name]


__all__ = ["KINDS", "Evaluation", "Task", "TaskKind", "kind"]
