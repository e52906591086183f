"""Retrieval: exact search, the top-k/merge primitives, faiss ANN indexes, BM25, hybrid and sharded.

The names below are imported on first use (PEP 562), so that `relm.retrieval.exact` or `.topk`, which
the datastore needs, do not pull in faiss and bm25s, and importing the datastore never imports the
retrieval stack that imports it back.
"""

from __future__ import annotations

import importlib

from .exact import exact_search  # numpy only: cheap, and the datastore needs them
from .topk import ResultHeap, merge_topk, topk

_EXPORTS = {
    "AnnConfig": "ann", "AnnIndex": "ann", "add_new_vectors": "ann", "build_ann_index": "ann",
    "evaluate_ann_index": "ann_tune", "tune_ann_index": "ann_tune",
    "BM25Config": "bm25", "BM25Index": "bm25", "build_bm25_index": "bm25",
    "PRESETS": "planner", "Plan": "planner", "plan_index": "planner",
    "Retriever": "retriever", "make_retriever": "retriever",
    "RetrieverConfig": "options", "SearchOptions": "options", "AdaptiveK": "options", "Subsample": "options",
    "Index": "registry", "INDEX_TYPES": "registry", "index_type": "registry",
}

__all__ = ["ResultHeap", "exact_search", "merge_topk", "topk", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
