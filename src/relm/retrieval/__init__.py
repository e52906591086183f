"""Retrieval: exact search, the top-k/merge primitives, faiss ANN indexes and BM25 (hybrid comes next)."""

from .ann import AnnConfig, AnnIndex, add_new_vectors, build_ann_index
from .ann_tune import evaluate_ann_index, tune_ann_index
from .bm25 import BM25Config, BM25Index, build_bm25_index
from .exact import exact_search
from .planner import PRESETS, Plan, plan_index
from .topk import ResultHeap, merge_topk, topk

__all__ = [
    "PRESETS",
    "AnnConfig",
    "AnnIndex",
    "BM25Config",
    "BM25Index",
    "Plan",
    "ResultHeap",
    "add_new_vectors",
    "build_ann_index",
    "build_bm25_index",
    "evaluate_ann_index",
    "exact_search",
    "merge_topk",
    "plan_index",
    "topk",
    "tune_ann_index",
]
