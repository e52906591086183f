"""Fusion, re-scoring, thresholds and adaptive k: small pure functions over (scores, ids) runs.

A run is `(scores (nq, k) float32, ids (nq, k) int64)`, best first, padded with (-inf, -1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .topk import PAD_ID, topk

Run = tuple[np.ndarray, np.ndarray]


def _fuse(runs: Sequence[Run], k: int, contribution: Callable[[int, np.ndarray, np.ndarray], np.ndarray]) -> Run:
    """Sum per-run contributions per id, query by query, and keep the top k."""
    nq = runs[0][0].shape[0]
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), PAD_ID, dtype=np.int64)
    for q in range(nq):
        total: dict[int, float] = {}
        for r, (scores, ids) in enumerate(runs):
            valid = ids[q] != PAD_ID
            for i, c in zip(ids[q][valid].tolist(), contribution(r, scores[q][valid], ids[q][valid]).tolist(),
                            strict=True):
                total[i] = total.get(i, 0.0) + c
        if total:
            cand = np.fromiter(total.keys(), dtype=np.int64, count=len(total))
            vals = np.fromiter(total.values(), dtype=np.float64, count=len(total)).astype(np.float32)
            s, i = topk(vals[None, :], k, cand)
            out_s[q], out_i[q] = s[0], i[0]
    return out_s, out_i


def rrf(runs: Sequence[Run], k: int, rrf_k: int = 60) -> Run:
    """Reciprocal rank fusion (Cormack et al. 2009): score(d) = sum over runs of 1 / (rrf_k + rank(d)), rank from 1."""

    def contribution(_r: int, scores: np.ndarray, _ids: np.ndarray) -> np.ndarray:
        return 1.0 / (rrf_k + np.arange(1, len(scores) + 1))

    return _fuse(runs, k, contribution)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Per-query min-max normalisation of one run's finite scores to [0, 1] (a constant run maps to 1)."""
    finite = np.isfinite(scores)
    lo = np.where(finite, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.where(hi > lo, (scores - lo) / span, 1.0)
    return np.where(finite, out, -np.inf).astype(np.float32)


def interpolate(dense: Run, sparse: Run, k: int, alpha: float = 0.5) -> Run:
    """Score interpolation: alpha * minmax(dense) + (1 - alpha) * minmax(sparse); a hit missing from a run adds 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    normalized = [(minmax(dense[0]), dense[1]), (minmax(sparse[0]), sparse[1])]
    weights = (alpha, 1.0 - alpha)
    return _fuse(normalized, k, lambda r, scores, _ids: weights[r] * scores)


def rescore(query_vectors: np.ndarray, candidates: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray],
            k: int) -> Run:
    """Exact inner products of each query with its candidate ids (nq, N), then top-k.

    `vectors_of(ids)` returns the stored (len(ids), d) vectors (float16 rows are upcast here).
    Used for hierarchical retrieval (BM25 top-N -> dense) and for ANN refine.
    """
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    valid = candidates != PAD_ID
    flat = np.unique(candidates[valid])
    if len(flat):
        vecs = np.asarray(vectors_of(flat), dtype=np.float32)  # (U, d)
        pos = np.searchsorted(flat, candidates[valid])
        rows = np.nonzero(valid)[0]
        scores[valid] = np.einsum("nd,nd->n", query_vectors[rows].astype(np.float32), vecs[pos])
    return topk(scores, k, candidates)


def threshold(run: Run, min_score: float) -> Run:
    """Drop hits scoring below `min_score` (they become padding)."""
    if isinstance(min_score, bool) or not isinstance(min_score, int | float | np.number) or not np.isfinite(min_score):
        raise ConfigError(f"threshold must be a finite number, got {min_score!r} (NaN would drop every hit)")
    scores, ids = run
    keep = scores >= min_score
    return np.where(keep, scores, -np.inf).astype(np.float32), np.where(keep, ids, PAD_ID)


def adaptive_k(run: Run, *, min_k: int = 1, max_ratio: float = 0.0, max_drop: float | None = None) -> Run:
    """Cut each query's list where the score distribution says the relevant hits end.

    Two rules, both optional and combined:
    - `max_drop`: cut before the largest gap between consecutive scores if that gap exceeds `max_drop`
      (the "elbow" of the sorted scores);
    - `max_ratio`: keep hits whose score is at least `max_ratio` x the best score (for positive scores).
    At least `min_k` hits are always kept.
    """
    if max_drop is not None and not (np.isfinite(max_drop) and max_drop >= 0):
        raise ConfigError(f"adaptive max_drop must be a finite gap >= 0, got {max_drop!r}")
    if not 0.0 <= max_ratio <= 1.0:  # NaN fails this too
        raise ConfigError(f"adaptive max_ratio must be in [0, 1], got {max_ratio!r}")
    if min_k < 0:
        raise ConfigError(f"adaptive min_k must be >= 0, got {min_k!r}")
    scores, ids = run
    scores, ids = scores.copy(), ids.copy()
    for q in range(scores.shape[0]):
        valid = int(np.sum(ids[q] != PAD_ID))
        cut = valid
        if max_drop is not None and valid > 1:
            gaps = scores[q, : valid - 1] - scores[q, 1:valid]
            g = int(np.argmax(gaps))
            if gaps[g] > max_drop:
                cut = min(cut, g + 1)
        if max_ratio > 0 and valid and scores[q, 0] > 0:
            cut = min(cut, int(np.sum(scores[q, :valid] >= max_ratio * scores[q, 0])))
        cut = max(cut, min(min_k, valid))
        scores[q, cut:] = -np.inf
        ids[q, cut:] = PAD_ID
    return scores, ids
