"""Text-video retrieval methods (task kind `retrieval`)."""

from cpt.methods.retrieval import baselines  # noqa: F401  (registers)
from cpt.methods.retrieval.base import RetrievalMethod, info_nce

__all__ = ["RetrievalMethod", "info_nce"]
