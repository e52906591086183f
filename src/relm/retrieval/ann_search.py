"""The pure pieces of `AnnIndex.search`: faiss SearchParameters, the `allowed` selector, the plan of a
filtered search (widened knobs or exact over the allowed set), and exact re-scoring of candidates with
the datastore's float16 vectors (refine).

Filtered search. A faiss selector drops disallowed passages from the results but not from the work: HNSW
still walks about efSearch nodes and IVF scans nprobe lists, of which only a fraction p = allowed / n
are allowed, so a selective filter returns fewer than k hits (an HNSW with efSearch 64 and p = 5%
finds ~3 allowed passages where 10 were asked for). `filter_plan` keeps the expected number of allowed
candidates what an unfiltered search sees, efSearch / p and nprobe / p, and for HNSW searches the
allowed set exactly instead when that scores no more vectors than the widened walk would (cheaper, and
complete). A selective HNSW filter is planned per query (`local_ef`): a filter correlated with the space
leaves fewer allowed passages near some queries than p says, so the share among each query's unfiltered
neighbours sets its efSearch. Rows that still come back
short of min(k, allowed) are searched exactly (`short_rows`), so no filter loses hits silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import ConfigError
from .indexes import SearchResult
from .topk import PAD_ID, topk

REFINE_BLOCK_BYTES = 8 << 20  # float32 candidate rows upcast at once: 8 MiB = 68 queries x k·r 80 x d 384
FP16_DECODE_MIN_ROWS = 1024


def _faiss():
    import faiss

    return faiss


# -- search parameters ------------------------------------------------------------------------------


def selector(allowed: np.ndarray | None, ntotal: int):
    """An IDSelectorBitmap over passage ids (bit i of byte i//8, little-endian), or None."""
    if allowed is None:
        return None
    allowed = np.asarray(allowed)
    if allowed.dtype != np.bool_ or allowed.ndim != 1:
        raise ConfigError(f"allowed must be a 1-d boolean mask over passage ids, got {allowed.dtype} {allowed.shape}")
    if len(allowed) != ntotal:
        raise ConfigError(f"allowed mask has {len(allowed):,} entries, the index {ntotal:,} passages")
    return _faiss().IDSelectorBitmap(np.packbits(allowed, bitorder="little"))


def search_parameters(structure: dict[str, Any], nprobe: int | None, ef_search: int, sel=None):
    """Per-call faiss SearchParameters, nested so each knob reaches the index it belongs to:

    IVF:            SearchParametersIVF(nprobe, sel[, quantizer_params=SearchParametersHNSW(efSearch)])
    HNSW:           SearchParametersHNSW(efSearch, sel)
    other (Flat):   SearchParameters(sel) or None
    OPQ / PCA:      SearchParametersPreTransform(index_params=<the above>)

    SearchParameters keep Python references to their sub-objects, so nothing is freed early.
    """
    faiss = _faiss()
    if structure["ivf"]:
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or 1))
        if structure["quantizer"] == "hnsw":
            # the quantizer returns nprobe lists; efSearch below nprobe would be raised to it anyway
            params.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(int(ef_search), int(nprobe or 1)))
    elif structure["hnsw"]:
        params = faiss.SearchParametersHNSW(efSearch=int(ef_search))
    elif sel is None:
        return None
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
    if structure["pretransform"]:
        params = faiss.SearchParametersPreTransform(index_params=params)
    return params


# -- filtered search --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FilterPlan:
    """How to search under a filter allowing `allowed` of `ntotal` passages: exactly over the allowed
    set, or with the ANN knobs widened by ntotal / allowed."""

    exact: bool
    nprobe: int | None
    ef_search: int
    allowed: int


def filter_plan(structure: dict[str, Any], nprobe: int | None, ef_search: int, k: int, allowed: int,
                ntotal: int, *, exact_cutoff: bool = True) -> FilterPlan:
    """The plan of a filtered search (module docstring), p = allowed / ntotal:

    HNSW: efSearch' = ceil(max(efSearch, k) / p) (faiss raises efSearch to k anyway); exact when
        allowed ≤ efSearch', i.e. allowed² ≤ max(efSearch, k)·ntotal: the walk computes a distance for
        every node it visits, allowed or not, so it would score at least as many vectors as the
        allowed set holds.
    IVF: nprobe' = min(ceil(nprobe / p), nlist), never exact: the selector is checked before a code is
        scored, so disallowed codes cost almost nothing and the widened probe stayed at or below exact
        down to p = 0.5% (an HNSW quantizer's efSearch is raised to nprobe' by `search_parameters`).
    Anything else (Flat) already scores every allowed vector: unchanged. p = 1 changes nothing.
    Measured one query at a time on 100k clustered vectors (benchmarks/filter_cutoff.py, docs/results.md):
    exact over the allowed set overtakes HNSW (efSearch 64) between p = 5% and 2%; the rule puts the
    switch at 2.5% there. `exact_cutoff=False` never switches (for that benchmark).
    """
    p = allowed / max(ntotal, 1)
    if allowed == 0:
        return FilterPlan(True, nprobe, ef_search, allowed)
    if p >= 1:
        return FilterPlan(False, nprobe, ef_search, allowed)
    exact = False
    if structure["ivf"] and nprobe is not None:
        nprobe = min(math.ceil(nprobe / p), int(structure["nlist"]))
    elif structure["hnsw"]:
        ef_search = min(math.ceil(max(ef_search, k) / p), max(ntotal, 1))
        exact = exact_cutoff and allowed <= ef_search
    return FilterPlan(exact, nprobe, ef_search, allowed)


PROBE_WIDTH = 64  # neighbours of the unfiltered probe: resolves allowed shares down to 1/64
# HNSW filters allowing less than this share are planned per query (one extra unfiltered search); a
# mask allowing more (tombstones, broad filters) uses the global efSearch / p: on 100k vectors a
# correlated half still reached recall@10 0.956 that way (benchmarks/filter_cutoff.py)
LOCAL_PLAN_BELOW = 0.5


def local_ef(probe_ids: np.ndarray, allowed: np.ndarray, ef_search: int, k: int, p: float,
             ntotal: int) -> np.ndarray:
    """(nq,) efSearch per query from the allowed share of its unfiltered neighbourhood: an unfiltered
    search's top max(efSearch, k, PROBE_WIDTH) ids `probe_ids`, of which a share p_q is allowed, and
    efSearch_q = ceil(max(efSearch, k) / min(p, p_q)) (p_q at least one of them). A filter correlated
    with the space (a domain; dates of topical text) leaves far fewer allowed passages near some
    queries than p says: a news filter on queries from other domains (measured on the shared corpus:
    recall@10 0.41 with the global efSearch / p, docs/results.md)."""
    width = max(ef_search, k)
    valid = probe_ids >= 0  # (nq, PROBE_WIDTH or more)
    share = (allowed[np.where(valid, probe_ids, 0)] & valid).sum(axis=1) / max(probe_ids.shape[1], 1)
    p_q = np.minimum(p, np.maximum(share, 1.0 / max(probe_ids.shape[1], 1)))
    return np.minimum(np.ceil(width / p_q), max(ntotal, 1)).astype(np.int64)


def short_rows(ids: np.ndarray, need: int) -> np.ndarray:
    """Indices of the rows of an (nq, k) id run holding fewer than `need` hits (ids ≥ 0)."""
    return np.nonzero((ids >= 0).sum(axis=1) < need)[0]


# -- exact re-scoring -------------------------------------------------------------------------------


def refine_exact(
    queries: np.ndarray, candidates: np.ndarray, k: int, fetch: Callable[[np.ndarray], np.ndarray]
) -> SearchResult:
    """Re-score candidate ids exactly and keep the top k.

    s[i, j] = <q_i, x_c(i,j)>, x read by `fetch(ids) -> (len(ids), d)` (float16 rows, upcast to
    float32); padding candidates (id -1) score -inf. queries (nq, d), candidates (nq, c) distinct per
    row (as faiss returns). Blocks of queries keep the upcast rows at REFINE_BLOCK_BYTES (cache-sized).
    The float16 -> float32 cast dominates (~1.5 ns per value with numpy), so a single query's
    fixed costs are kept to a few numpy calls.
    """
    nq, d = queries.shape
    c = candidates.shape[1]
    out_s = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    batch = max(1, REFINE_BLOCK_BYTES // (4 * d * max(c, 1)))
    for q0 in range(0, nq, batch):
        q = queries[q0 : q0 + batch]
        cand = candidates[q0 : q0 + batch]
        pads = cand < 0
        has_pad = bool(pads.any())
        flat = np.where(pads, 0, cand).ravel() if has_pad else cand.ravel()
        rows = to_float32(fetch(flat)).reshape(len(q), c, d)  # (nb, c, d)
        scores = np.matmul(rows, q[:, :, None])[:, :, 0]  # (nb, c, d) @ (nb, d, 1) -> (nb, c)
        if has_pad:
            scores[pads] = -np.inf
        out_s[q0 : q0 + len(q)], out_i[q0 : q0 + len(q)] = _small_topk(scores, cand, k, has_pad)
    return out_s, out_i


def to_float32(rows: np.ndarray) -> np.ndarray:
    """float16 (n, d) -> float32 (n, d). From FP16_DECODE_MIN_ROWS rows on, faiss's fp16 scalar-quantizer
    decoder (multi-threaded, about twice numpy's astype, which converts one value at a time); below
    that its thread start-up costs more than it saves. Other dtypes go through numpy."""
    if rows.dtype != np.float16 or rows.ndim != 2 or len(rows) < FP16_DECODE_MIN_ROWS:
        return np.asarray(rows, dtype=np.float32)
    return _fp16_decoder(rows.shape[1]).decode(np.ascontiguousarray(rows).view(np.uint8))


@lru_cache(maxsize=8)
def _fp16_decoder(d: int):
    """One decoder per dimension: `decode` is const, so concurrent searches may share it."""
    faiss = _faiss()
    return faiss.ScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16)


def _small_topk(scores: np.ndarray, ids: np.ndarray, k: int, has_pad: bool = True) -> SearchResult:
    """`topk` for the few hundred candidates of a refine (ids -1 where scores are -inf): one lexsort
    by (-score, id) per row; topk's argpartition path costs ~50 µs a call, as much as a query."""
    if scores.shape[1] > 1024:
        return topk(scores, k, ids=ids)
    key_ids = np.where(ids == PAD_ID, np.iinfo(np.int64).max, ids) if has_pad else ids
    order = np.lexsort((key_ids, -scores), axis=1)[:, :k]
    s = np.take_along_axis(scores, order, axis=1)
    i = np.take_along_axis(ids, order, axis=1)
    if s.shape[1] < k:  # fewer candidates than k
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=PAD_ID)
    return s.astype(np.float32, copy=False), i


def fp16_refine_index(shards: list[tuple[int, np.ndarray]], d: int, block_rows: int = 65536):
    """An in-RAM faiss IndexScalarQuantizer(QT_fp16, inner product) holding the datastore's float16
    vectors in id order: faiss's SQfp16 codes are the IEEE half bytes themselves, so the shards are
    copied block by block, never upcast. Costs 2·d bytes per vector of RAM; refine through it runs in
    faiss (multi-threaded SIMD) instead of gathering rows from the memory maps in numpy."""
    faiss = _faiss()
    index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    total = sum(len(arr) for _, arr in shards)
    codes = np.empty((total, d), dtype=np.float16)
    for start, arr in shards:
        for r0 in range(0, len(arr), block_rows):
            rows = arr[r0 : r0 + block_rows]
            codes[start + r0 : start + r0 + len(rows)] = rows
    faiss.copy_array_to_vector(codes.view(np.uint8).ravel(), index.codes)
    index.ntotal = total
    return index


def refine_parameters(refine_factor: int, base_params=None):
    """SearchParameters for a faiss IndexRefine: k·refine_factor base candidates, `base_params` (knobs and
    selector) passed through to the base index."""
    faiss = _faiss()
    if base_params is None:
        return faiss.IndexRefineSearchParameters(k_factor=float(refine_factor))
    # passed to the constructor, faiss's wrapper keeps a Python reference to base_params
    return faiss.IndexRefineSearchParameters(k_factor=float(refine_factor), base_index_params=base_params)


def shard_reader(shards: list[tuple[int, np.ndarray]]) -> Callable[[np.ndarray], np.ndarray]:
    """fetch(ids) -> float16 rows from [(first id, memmap)] shards; ids come from the index, so they
    are not range-checked (`Datastore.embeddings` does the same with checks, ~10 µs more a call)."""
    starts = np.array([start for start, _ in shards], dtype=np.int64)
    if len(shards) == 1:
        arr = shards[0][1]
        return lambda ids: arr[ids]

    def fetch(ids: np.ndarray) -> np.ndarray:
        which = np.searchsorted(starts, ids, side="right") - 1
        out = np.empty((len(ids), shards[0][1].shape[1]), dtype=np.float16)
        for w in np.unique(which):
            sel = which == w
            out[sel] = shards[w][1][ids[sel] - starts[w]]
        return out

    return fetch
