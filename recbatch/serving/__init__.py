"""Serving store: published runs loaded into Redis, read with one round trip.

``load_run`` writes a run under a new version and flips a pointer;
``get_recommendations`` reads through that pointer; ``rollback`` flips back.
docs/serving.md documents the key layout and value format for other languages.
"""

from recbatch.serving.loader import LoadResult, load_run
from recbatch.serving.reader import Recommendations, get_recommendations

__all__ = ["LoadResult", "Recommendations", "get_recommendations", "load_run"]
