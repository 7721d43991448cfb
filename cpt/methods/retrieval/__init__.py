"""Text-video retrieval methods (task kind `retrieval`)."""

from cpt.methods.retrieval import baselines, dgl, tempme  # noqa: F401  (they register)
from cpt.methods.retrieval.base import RetrievalMethod, info_nce

__all__ = ["RetrievalMethod", "info_nce"]
