"""Retrieval: exact search and the top-k/merge primitives (ANN, BM25 and hybrid come next)."""

from .exact import exact_search
from .topk import ResultHeap, merge_topk, topk

__all__ = ["ResultHeap", "exact_search", "merge_topk", "topk"]
