"""Top-k selection and merging: small pure array functions.

Every function returns scores sorted in decreasing order with their ids, ties
broken by the smaller id, and pads rows that have fewer than k candidates with
score -inf and id -1 (faiss's convention).
"""

from __future__ import annotations

import numpy as np

PAD_ID = -1


def topk(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row of `scores` (nq, n) as (scores (nq, k), ids (nq, k)).

    `ids` (n,) or (nq, n) maps columns to ids (default: the column index).
    O(n) per row with argpartition, then O(k log k) to sort the k survivors.
    """
    scores = np.asarray(scores)
    nq, n = scores.shape
    if ids is None:
        ids = np.arange(n, dtype=np.int64)
    ids = np.broadcast_to(np.asarray(ids, dtype=np.int64), scores.shape)
    kk = min(k, n)
    if kk == 0:
        return _pad(np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), k)
    if kk < n:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        part = _fix_boundary_ties(scores, ids, part, kk)
    else:
        part = np.broadcast_to(np.arange(n), (nq, n))
    top_s = np.take_along_axis(scores, part, axis=1)
    top_i = np.take_along_axis(ids, part, axis=1)
    # sort by (-score, id): lexsort takes the last key as primary
    order = np.lexsort((top_i, -top_s), axis=1)
    top_s = np.take_along_axis(top_s, order, axis=1).astype(np.float32, copy=False)
    top_i = np.take_along_axis(top_i, order, axis=1)
    top_i = np.where(np.isneginf(top_s), PAD_ID, top_i)  # masked-out entries (-inf) are never hits
    return _pad(top_s, top_i, k)


def _fix_boundary_ties(scores: np.ndarray, ids: np.ndarray, part: np.ndarray, k: int) -> np.ndarray:
    """argpartition picks arbitrarily among entries tied with the k-th score; pick the smallest ids.

    Only rows with such a tie (rare outside duplicate passages) take the slow path.
    """
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    n_tied_all = (scores == kth[:, None]).sum(axis=1)
    n_tied_sel = (np.take_along_axis(scores, part, axis=1) == kth[:, None]).sum(axis=1)
    rows = np.nonzero(n_tied_all > n_tied_sel)[0]
    if len(rows) == 0:
        return part
    part = part.copy()
    for r in rows:
        above = np.nonzero(scores[r] > kth[r])[0]
        tied = np.nonzero(scores[r] == kth[r])[0]
        tied = tied[np.argsort(ids[r, tied], kind="stable")][: k - len(above)]
        part[r] = np.concatenate([above, tied])
    return part


def _pad(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    nq, have = s.shape
    if have >= k:
        return s, i
    s2 = np.full((nq, k), -np.inf, dtype=np.float32)
    i2 = np.full((nq, k), PAD_ID, dtype=np.int64)
    s2[:, :have] = s
    i2[:, :have] = i
    return s2, i2


def merge_topk(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted (scores, ids) result sets of the same queries into one top-k.

    Padding (id -1) never displaces a real hit.
    """
    s = np.concatenate([a[0], b[0]], axis=1)
    i = np.concatenate([a[1], b[1]], axis=1)
    s = np.where(i == PAD_ID, -np.inf, s)
    # padded ids sort after every real id among equal (-inf) scores
    key_ids = np.where(i == PAD_ID, np.iinfo(np.int64).max, i)
    order = np.lexsort((key_ids, -s), axis=1)[:, :k]
    s = np.take_along_axis(s, order, axis=1)
    i = np.take_along_axis(i, order, axis=1)
    i = np.where(np.isneginf(s), PAD_ID, i)
    return _pad(s.astype(np.float32, copy=False), i, k)


class ResultHeap:
    """Running top-k of a batch of queries, fed block by block (faiss `contrib.exhaustive_search` style)."""

    def __init__(self, nq: int, k: int):
        self.k = k
        self.scores = np.full((nq, k), -np.inf, dtype=np.float32)
        self.ids = np.full((nq, k), PAD_ID, dtype=np.int64)

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        block = topk(scores, self.k, ids)
        self.scores, self.ids = merge_topk((self.scores, self.ids), block, self.k)
