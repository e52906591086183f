"""One Retriever API over every way relm searches.

    retriever = make_retriever(ds, "hybrid", index="ivfpq", bm25_index="bm25", fusion="rrf")
    hits = retriever.search(["query one", "query two"], k=10, before=ts, threshold=0.3)

A `Retriever` turns query strings into runs `(scores (nq, k), ids (nq, k))` and
then into `Hit`s. The base class owns what all of them share: argument checks,
the filter mask (tombstones, `before`/`after`, domains), the result cache, the
similarity threshold and adaptive k. Subclasses implement `_search(queries, k,
allowed)` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import check_float, check_int
from ..errors import ConfigError
from .cache import ResultCache
from .exact import exact_search
from .fusion import adaptive_k as adaptive_cut
from .fusion import interpolate, rescore, rrf
from .fusion import threshold as threshold_cut
from .indexes import check_k

log = logging.getLogger(__name__)

RETRIEVERS = ("exact", "ann", "bm25", "hybrid", "sharded")
FUSIONS = ("rrf", "interpolate", "hierarchical")


class Retriever:
    kind = "base"

    def __init__(self, ds, *, cache_bytes: int = 0):
        self.ds = ds
        cache_bytes = check_int(cache_bytes, "cache_bytes (--cache-mb)", minimum=0)
        self.cache = ResultCache(cache_bytes) if cache_bytes > 0 else None

    # -- what subclasses provide ----------------------------------------------------------------
    def _search(self, queries: list[str], k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def settings(self) -> tuple:
        """Everything besides the query that changes the answer (part of the cache key)."""
        return (self.kind,)

    # -- the shared path --------------------------------------------------------------------------
    def search_ids(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        *,
        before: int | None = None,
        after: int | None = None,
        domains: Sequence[str] | None = None,
        threshold: float | None = None,
        adaptive: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) for each query, best first, after filters, threshold and adaptive k."""
        k = check_k(k)
        queries = [queries] if isinstance(queries, str) else list(queries)
        if not queries:
            raise ConfigError("no queries given")
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise ConfigError("empty query; give some text to search for")
        before, after = time_bound(before, "before"), time_bound(after, "after")
        if before is not None and after is not None and after >= before:
            raise ConfigError(f"after ({after}) must be earlier than before ({before}): no document can match")
        if isinstance(domains, str):
            domains = [domains]
        threshold = check_float(threshold, "threshold (--threshold)", optional=True)
        adaptive = check_adaptive(adaptive)
        allowed = self.ds.allowed(before=before, after=after, domains=domains)
        run = self._cached(queries, k, (before, after, tuple(domains or ())), allowed)
        if threshold is not None:
            run = threshold_cut(run, threshold)
        if adaptive:
            run = adaptive_cut(run, **adaptive)
        return run

    def search(self, queries: str | Sequence[str], k: int = 10, **options) -> list[list]:
        """`Hit`s for each query (see `search_ids` for the options)."""
        scores, ids = self.search_ids(queries, k, **options)
        return [self.ds.hits(s, i) for s, i in zip(scores, ids, strict=True)]

    def _cached(self, queries: list[str], k: int, filters: tuple, allowed) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None:
            return self._search(queries, k, allowed)
        settings = (*self.settings(), k, filters)
        keys = [ResultCache.key(q, settings, self.ds.revision) for q in queries]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        missing = []
        for row, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is None:
                missing.append(row)
            else:
                scores[row], ids[row] = hit
        if missing:
            s, i = self._search([queries[r] for r in missing], k, allowed)
            for j, row in enumerate(missing):
                scores[row], ids[row] = s[j], i[j]
                self.cache.put(keys[row], s[j], i[j])
        return scores, ids


def time_bound(value: Any, name: str) -> int | None:
    """A `before`/`after` bound as epoch seconds: an int, a finite float (floored) or a string that
    `parse_timestamp` reads (epoch seconds, negative before 1970, or ISO 8601)."""
    from ..corpus.documents import TIMESTAMP_FORMATS, parse_timestamp

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | np.integer | np.floating):
        raise ConfigError(f"{name} must be a time ({TIMESTAMP_FORMATS}), got {value!r}")
    try:
        ts = parse_timestamp(value.item() if isinstance(value, np.generic) else value)
    except (ValueError, OverflowError) as e:
        raise ConfigError(f"{name} {value!r}: {e}") from e
    if ts is None:
        raise ConfigError(f"{name} is empty; give a time ({TIMESTAMP_FORMATS})")
    return ts


ADAPTIVE_KEYS = ("max_drop", "max_ratio", "min_k")


def check_adaptive(adaptive: dict[str, Any] | None) -> dict[str, Any] | None:
    """Adaptive-k options (see fusion.adaptive_k), checked: max_drop a finite gap >= 0, max_ratio in
    [0, 1], min_k >= 0."""
    if adaptive is None:
        return None
    if not isinstance(adaptive, dict):
        raise ConfigError(f"adaptive must be a dict with keys from {list(ADAPTIVE_KEYS)}, got {adaptive!r}")
    unknown = sorted(set(adaptive) - set(ADAPTIVE_KEYS))
    if unknown:
        raise ConfigError(f"adaptive: unknown option(s) {unknown}; known: {list(ADAPTIVE_KEYS)}")
    out = dict(adaptive)
    if "max_drop" in out:
        out["max_drop"] = check_float(out["max_drop"], "adaptive max_drop (--adaptive-k GAP)", minimum=0,
                                      optional=True)
    if "max_ratio" in out:
        out["max_ratio"] = check_float(out["max_ratio"], "adaptive max_ratio", minimum=0, maximum=1)
    if "min_k" in out:
        out["min_k"] = check_int(out["min_k"], "adaptive min_k", minimum=0)
    return out


class DenseRetriever(Retriever):
    """Base for retrievers that embed queries with the datastore's encoder."""

    def __init__(self, ds, *, batch_size: int = 64, **kw):
        super().__init__(ds, **kw)
        self.batch_size = check_int(batch_size, "batch_size (--batch-size)", minimum=1)

    def search_vectors(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None):
        raise NotImplementedError

    def _search(self, queries, k, allowed):
        return self.search_vectors(self.ds.encode_queries(queries, self.batch_size), k, allowed)


class ExactRetriever(DenseRetriever):
    kind = "exact"

    def search_vectors(self, vectors, k, allowed):
        return exact_search(vectors, self.ds.embedding_shards, k, allowed=allowed)


class AnnRetriever(DenseRetriever):
    kind = "ann"

    def __init__(self, ds, index: str, *, nprobe=None, ef_search=None, refine_factor=None, **kw):
        from .ann import AnnIndex

        super().__init__(ds, **kw)
        self.knobs = check_knobs(nprobe=nprobe, ef_search=ef_search, refine_factor=refine_factor)
        self.index = AnnIndex.open(ds, index)
        self.name = index

    def settings(self):
        return (self.kind, self.name, tuple(sorted(self.knobs.items())))

    def search_vectors(self, vectors, k, allowed):
        return self.index.search(vectors, k, allowed=allowed, **self.knobs)


class BM25Retriever(Retriever):
    kind = "bm25"

    def __init__(self, ds, index: str, **kw):
        from .bm25 import BM25Index

        super().__init__(ds, **kw)
        self.index = BM25Index.open(ds, index)
        self.name = index

    def settings(self):
        return (self.kind, self.name)

    def _search(self, queries, k, allowed):
        return self.index.search(queries, k, allowed=allowed)


class HybridRetriever(Retriever):
    """BM25 + dense: reciprocal rank fusion, score interpolation, or hierarchical (BM25 top-N -> dense re-score)."""

    kind = "hybrid"

    def __init__(self, ds, dense: DenseRetriever, sparse: BM25Retriever, *, fusion: str = "rrf",
                 candidates: int = 100, alpha: float = 0.5, rrf_k: int = 60, **kw):
        super().__init__(ds, **kw)
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose from {list(FUSIONS)}")
        candidates = check_int(candidates, "candidates (--candidates)", minimum=1)
        alpha = check_float(alpha, "alpha (--alpha)", minimum=0, maximum=1)
        rrf_k = check_int(rrf_k, "rrf_k", minimum=0)
        self.dense, self.sparse = dense, sparse
        self.fusion, self.candidates, self.alpha, self.rrf_k = fusion, candidates, alpha, rrf_k

    def settings(self):
        return (self.kind, self.dense.settings(), self.sparse.settings(), self.fusion, self.candidates,
                self.alpha, self.rrf_k)

    def _search(self, queries, k, allowed):
        n = max(self.candidates, k)
        sparse = self.sparse._search(queries, n, allowed)
        vectors = self.ds.encode_queries(queries, self.dense.batch_size)
        if self.fusion == "hierarchical":
            # exact dense scores of the BM25 candidates, from the stored float16 vectors
            return rescore(vectors, sparse[1], self.ds.embeddings, k)
        dense = self.dense.search_vectors(vectors, n, allowed)
        if self.fusion == "rrf":
            return rrf([dense, sparse], k, rrf_k=self.rrf_k)
        return interpolate(dense, sparse, k, alpha=self.alpha)


class ShardedRetriever(DenseRetriever):
    kind = "sharded"

    def __init__(self, ds, index: str, *, probe_shards: int | None = None, **kw):
        from .sharding import ShardedIndex

        super().__init__(ds, **kw)
        probe_shards = check_int(probe_shards, "probe_shards (--probe-shards)", minimum=1, optional=True)
        self.index = ShardedIndex.open(ds, index)
        self.name, self.probe_shards = index, probe_shards

    def settings(self):
        return (self.kind, self.name, self.probe_shards)

    def search_vectors(self, vectors, k, allowed):
        return self.index.search(vectors, k, allowed=allowed, probe_shards=self.probe_shards)


def make_retriever(
    ds,
    kind: str = "exact",
    *,
    index: str | None = None,
    bm25_index: str | None = None,
    fusion: str = "rrf",
    candidates: int = 100,
    alpha: float = 0.5,
    nprobe: int | None = None,
    ef_search: int | None = None,
    refine_factor: int | None = None,
    probe_shards: int | None = None,
    cache_bytes: int = 0,
    batch_size: int = 64,
) -> Retriever:
    """The retriever for a CLI-style description (`relm search --retriever ...`).

    Every argument is checked before any index is opened, whether or not this kind uses it.
    """
    if kind not in RETRIEVERS:
        raise ConfigError(f"unknown retriever {kind!r}; choose from {list(RETRIEVERS)}")
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion!r}; choose from {list(FUSIONS)}")
    check_int(candidates, "candidates (--candidates)", minimum=1)
    check_float(alpha, "alpha (--alpha)", minimum=0, maximum=1)
    check_int(probe_shards, "probe_shards (--probe-shards)", minimum=1, optional=True)
    check_int(cache_bytes, "cache_bytes (--cache-mb)", minimum=0)
    check_int(batch_size, "batch_size (--batch-size)", minimum=1)
    knobs = check_knobs(nprobe=nprobe, ef_search=ef_search, refine_factor=refine_factor)
    dense_kw = {"cache_bytes": cache_bytes, "batch_size": batch_size}
    if kind == "exact":
        return ExactRetriever(ds, **dense_kw)
    if kind == "ann":
        return AnnRetriever(ds, _need(index, "ann", "--index"), **dense_kw, **knobs)
    if kind == "bm25":
        return BM25Retriever(ds, _need(bm25_index or index, "bm25", "--index"), cache_bytes=cache_bytes)
    if kind == "sharded":
        return ShardedRetriever(ds, _need(index, "sharded", "--index"), probe_shards=probe_shards, **dense_kw)
    sparse_name = _need(bm25_index, "hybrid", "--bm25-index")
    dense: DenseRetriever = (AnnRetriever(ds, index, batch_size=batch_size, **knobs) if index
                             else ExactRetriever(ds, batch_size=batch_size))
    sparse = BM25Retriever(ds, sparse_name)
    return HybridRetriever(ds, dense, sparse, fusion=fusion, candidates=candidates, alpha=alpha,
                           cache_bytes=cache_bytes)


def check_knobs(*, nprobe=None, ef_search=None, refine_factor=None) -> dict[str, int | None]:
    """ANN search knobs: each None (the index's tuned value) or an integer >= 1."""
    return {
        "nprobe": check_int(nprobe, "nprobe (--nprobe)", minimum=1, optional=True),
        "ef_search": check_int(ef_search, "ef_search (--ef-search)", minimum=1, optional=True),
        "refine_factor": check_int(refine_factor, "refine_factor (--refine)", minimum=1, optional=True),
    }


def _need(value: str | None, kind: str, flag: str) -> str:
    if not value:
        raise ConfigError(f"the {kind} retriever needs {flag} NAME (list indexes with `relm info DS`)")
    return value
