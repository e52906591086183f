"""The one way relm searches: a `Retriever` over a datastore, configured by a `RetrieverConfig`.

    r = Retriever(ds, RetrieverConfig("hybrid", index="pq", bm25_index="bm25", cache_bytes=64 << 20))
    hits = r.search(["query one", "query two"], SearchOptions(k=10, before="2020-01-01", threshold=0.02))
    scores, ids = r.search_ids(texts, SearchOptions(k=10))          # (nq, k) runs, best first
    scores, ids = r.search_vectors(query_vectors, SearchOptions(k=10))   # exact, ann and sharded
    r.refresh()                                                      # follow the datastore's updates

Both entry points go through one path: the filter mask of the options (tombstones, `before`/`after`,
domains, a subsample), cached per filter and revision; the result cache, keyed by the exact query, the
options and the revision; then the score threshold and adaptive k. What differs per kind is a backend
with `search_vectors(vectors, k, allowed)` and/or `search_texts(texts, k, allowed)`.

The threshold is on the retriever's raw score scale (`RetrieverConfig.score_scale`: cosine in [-1, 1],
BM25 unbounded, RRF at most 2 / (rrf_k + 1), about 0.033). Nothing is lost silently: a warning (once per
retriever) says when filters exclude every passage or a filter's field is missing, when a threshold is
above the retriever's highest score or empties a list, and when fewer than k hits come back although k
passages pass the filters (BM25 matches only passages sharing a query term). A hybrid fuses the top
`candidates` of each run for every k, so its top k is the first k of one list; k > candidates is refused.

A Retriever holds one revision of its datastore (a snapshot: datastore, opened indexes, masks) and answers
from it until `refresh()`, which reopens the datastore and its indexes when a writer committed since.
Searches read the snapshot once, so a refresh in another thread never mixes two revisions in one answer.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import partial
from .cache import ResultCache
from .fusion import adaptive_k, interpolate, rescore, rrf, threshold
from .options import (  # noqa: F401 (re-exported: the seam's vocabulary)
    FUSIONS,
    RETRIEVERS,
    AdaptiveK,
    RetrieverConfig,
    SearchOptions,
    Subsample,
    check_queries,
    search_options,
    time_bound,
)

log = logging.getLogger(__name__)

Run = tuple[np.ndarray, np.ndarray]
MASK_CACHE = 8  # filter masks kept per revision: n_passages bytes each (1 GB at a billion passages)


# -- backends: one per kind, holding its opened indexes ----------------------------------------------


class _Exact:
    def __init__(self, ds, config: RetrieverConfig):
        self.ds, self.batch_size, self.truncate = ds, config.batch_size, config.query_truncation

    def info(self) -> dict[str, Any]:
        return {}

    def search_vectors(self, vectors: np.ndarray, k: int, allowed) -> Run:
        return self.ds.search_vectors(vectors, k, allowed)

    def search_texts(self, texts: list[str], k: int, allowed) -> Run:
        return self.search_vectors(self.ds.encode_queries(texts, self.batch_size, self.truncate), k, allowed)


class _Ann(_Exact):
    def __init__(self, ds, config: RetrieverConfig):
        from .ann import AnnIndex

        super().__init__(ds, config)
        self.index = AnnIndex.open(ds, config.index)
        self.knobs = {"nprobe": config.nprobe, "ef_search": config.ef_search, "refine_factor": config.refine_factor}

    def info(self):
        return {"factory": self.index.config["factory"], "params": self.index.defaults}

    def search_vectors(self, vectors, k, allowed):
        return self.index.search(vectors, k, allowed=allowed, **self.knobs)


class _Sharded(_Exact):
    def __init__(self, ds, config: RetrieverConfig):
        from .sharding import ShardedIndex

        super().__init__(ds, config)
        self.index = ShardedIndex.open(ds, config.index)
        self.probe_shards = config.probe_shards

    def search_vectors(self, vectors, k, allowed):
        return self.index.search(vectors, k, allowed=allowed, probe_shards=self.probe_shards)


class _BM25:
    search_vectors = None

    def __init__(self, ds, config: RetrieverConfig):
        from .bm25 import BM25Index

        self.index = BM25Index.open(ds, config.bm25_index)

    def info(self):
        return {}

    def search_texts(self, texts, k, allowed):
        return self.index.search(texts, k, allowed=allowed)


class _Hybrid:
    """BM25 + dense: reciprocal rank fusion, score interpolation, or hierarchical (BM25 top-N -> exact
    dense re-score of those candidates from the stored float16 vectors)."""

    search_vectors = None

    def __init__(self, ds, config: RetrieverConfig):
        self.ds, self.config = ds, config
        self.sparse = _BM25(ds, config)
        self.dense = _Ann(ds, config) if config.index else _Exact(ds, config)

    def info(self):
        return self.dense.info()

    def search_texts(self, texts, k, allowed):
        c = self.config
        check_hybrid_k(k, c)
        n = c.candidates  # never k: the fused list is one function of the candidates, -k takes its prefix
        sparse = self.sparse.search_texts(texts, n, allowed)
        vectors = self.ds.encode_queries(texts, c.batch_size, c.query_truncation)
        if c.fusion == "hierarchical":
            return rescore(vectors, sparse[1], self.ds.embeddings, k)
        dense = self.dense.search_vectors(vectors, n, allowed)
        if c.fusion == "rrf":
            return rrf([dense, sparse], k, rrf_k=c.rrf_k)
        return interpolate(dense, sparse, k, alpha=c.alpha)


BACKENDS = {"exact": _Exact, "ann": _Ann, "sharded": _Sharded, "bm25": _BM25, "hybrid": _Hybrid}


def check_hybrid_k(k: int, config: RetrieverConfig) -> None:
    """A hybrid fuses the top `candidates` of each run whatever k is, so its top k is the first k of one
    fused list and agrees across k; a k beyond the candidates is refused rather than silently deepening the
    runs (which reorders the top)."""
    if config.kind == "hybrid" and k > config.candidates:
        raise ConfigError(f"k = {k} exceeds the hybrid's candidates = {config.candidates} (--candidates): it fuses "
                          f"the top {config.candidates} of each run; pass --candidates {k} or more")


_SHORT_REASON = {  # why a retriever can return fewer than k hits when k passages pass the filters
    "bm25": "BM25 returns only passages that share a term with the query",
    "hybrid hierarchical": "hierarchical re-scores only BM25's hits, passages that share a term with the query",
    "hybrid rrf": "the dense run came back short",
    "hybrid interpolate": "the dense run came back short",
    "ann": "the approximate search found fewer (raise --nprobe / --ef-search, or search exactly)",
    "sharded": "only the probed shards were searched (raise --probe-shards)",
}


NO_DATES = ("no document has a timestamp, the field --before/--after filter on (rebuild with --timestamp-field "
            "FIELD naming the documents' date field, default 'timestamp': epoch seconds or ISO 8601)")


def _say_what_dates_drop(ds, opts: SearchOptions) -> None:
    """Warn when a time bound excludes undated documents (they can match no bound) while some are dated."""
    if opts.before is None and opts.after is None:
        return
    from ..corpus.documents import NO_TIMESTAMP

    undated = int(np.count_nonzero(np.asarray(ds.doc_timestamp) == NO_TIMESTAMP))
    if 0 < undated < ds.n_documents:
        log.warning("%s: --before/--after exclude the %s of %s documents that have no timestamp", ds.root,
                    f"{undated:,}", f"{ds.n_documents:,}")


def _say_why_empty(ds, opts: SearchOptions, mask: np.ndarray) -> None:
    """Warn (once per filter and revision: masks are cached) when the filters leave nothing to return,
    naming the filter, instead of answering every query with nothing and no reason."""
    if mask.any() or len(ds) == 0:
        return
    from ..corpus.documents import NO_TIMESTAMP

    why = []
    if opts.before is not None or opts.after is not None:
        dated = int(np.count_nonzero(np.asarray(ds.doc_timestamp) != NO_TIMESTAMP))
        why.append(NO_DATES if dated == 0 else
                   f"no live document has a timestamp in the --before/--after range ({dated:,} dated documents)")
    if opts.domains:
        why.append(f"domains {list(opts.domains)}")
    if opts.subsample is not None:
        why.append(f"subsample {opts.subsample.fraction}")
    if len(ds.deleted_documents) == ds.n_documents:
        why.append("every document is deleted")
    log.warning("%s: the filters exclude every passage (%s); every search returns nothing",
                ds.root, "; ".join(why) or "filters")


class _Snapshot:
    """One revision: the datastore, its opened backend and the filter masks computed at this revision."""

    def __init__(self, ds, config: RetrieverConfig, backends: Mapping[str, Callable] | None = None):
        self.ds = ds
        self.backend = {**BACKENDS, **(backends or {})}[config.kind](ds, config)
        self._masks: OrderedDict[tuple, np.ndarray | None] = OrderedDict()
        self._counts: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def mask(self, opts: SearchOptions) -> np.ndarray | None:
        """What a search with these options may return (bool (n_passages,), read-only), or None for all."""
        key = opts.filters
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = self.ds.allowed(before=opts.before, after=opts.after, domains=opts.domains)
        if opts.subsample is not None:
            from .subsample import kept_passages

            kept = kept_passages(len(self.ds), opts.subsample.fraction, opts.subsample.seed)
            mask = kept if mask is None else mask & kept
        if mask is not None:
            _say_why_empty(self.ds, opts, mask)
            _say_what_dates_drop(self.ds, opts)
            mask.flags.writeable = False  # shared by every search with these filters
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > MASK_CACHE:
                self._masks.popitem(last=False)
        return mask

    def allowed_count(self, opts: SearchOptions) -> int:
        """How many passages a search with these options may return (counted once per filter and revision)."""
        key = opts.filters
        with self._lock:
            if key in self._counts:
                return self._counts[key]
        mask = self.mask(opts)
        n = len(self.ds) if mask is None else int(np.count_nonzero(mask))
        with self._lock:
            self._counts[key] = n
            while len(self._counts) > MASK_CACHE:
                self._counts.pop(next(iter(self._counts)))
        return n


# -- the Retriever --------------------------------------------------------------------------------------


class Retriever:
    """Search one datastore the way `config` says; see the module docstring."""

    def __init__(self, ds, config: RetrieverConfig | None = None, *, backends: Mapping[str, Callable] | None = None):
        config = RetrieverConfig() if config is None else config
        if not isinstance(config, RetrieverConfig):
            raise ConfigError(f"config must be a RetrieverConfig, got {type(config).__name__}")
        self.config = config
        self.cache = ResultCache(config.cache_bytes) if config.cache_bytes > 0 else None
        self._warned: set[Hashable] = set()
        self._refresh_lock = threading.Lock()
        self.backends = dict(backends or {})  # kind -> backend(ds, config) replacing BACKENDS' (relm.distributed)
        self._state = _Snapshot(ds, config, self.backends)

    def __repr__(self) -> str:
        return f"Retriever({self.ds.root}, {self.config.changed()}, revision {self.ds.revision})"

    @property
    def ds(self):
        """The datastore at the revision this retriever answers from."""
        return self._state.ds

    @property
    def kind(self) -> str:
        return self.config.kind

    def describe(self) -> dict[str, Any]:
        """{"type": kind, the config's non-default fields, what the opened index says (factory, tuned knobs)}."""
        return {"type": self.kind, **{k: v for k, v in self.config.changed().items() if k != "kind"},
                **self._state.backend.info()}

    def with_kind(self, kind: str) -> Retriever:
        """A retriever of another kind on the same datastore revision (`RetrieverConfig.with_kind`)."""
        return self if kind == self.kind else Retriever(self.ds, self.config.with_kind(kind), backends=self.backends)

    # -- following updates ------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Move to the datastore's newest revision if a writer committed since (cheap when nothing
        changed: one read of manifest.json); reopens the indexes and drops cached results and masks.
        True when it moved."""
        with self._refresh_lock:
            old = self._state.ds
            new = old.reopen_if_changed()
            if new is old:
                return False
            self._state = _Snapshot(new, self.config, self.backends)
            if self.cache is not None:
                self.cache.clear()
            log.info("retriever moved from revision %d to %d of %s", old.revision, new.revision, new.root)
            return True

    # -- the entry points ---------------------------------------------------------------------------
    def search(self, texts: str | Sequence[str], opts: SearchOptions | int | None = None, /, **kw) -> list[list]:
        """`Hit`s for each query text, best first (options: `SearchOptions`, or k and its fields)."""
        state = self._state
        scores, ids = self._texts(state, texts, search_options(opts, **kw))
        return [state.ds.hits(s, i) for s, i in zip(scores, ids, strict=True)]

    def search_ids(self, texts: str | Sequence[str], opts: SearchOptions | int | None = None, /, **kw) -> Run:
        """(scores (nq, k) float32, passage ids (nq, k) int64) for each query text, padded with (-inf, -1)."""
        return self._texts(self._state, texts, search_options(opts, **kw))

    def search_vectors(self, vectors: np.ndarray, opts: SearchOptions | int | None = None, /, **kw) -> Run:
        """(scores, ids) for query vectors (nq, d) already embedded with the datastore's encoder."""
        opts = search_options(opts, **kw)
        state = self._state
        if state.backend.search_vectors is None:
            raise ConfigError(f"the {self.kind} retriever searches query text, not vectors; use search(texts) "
                              "or an exact, ann or sharded retriever")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != state.ds.dim:
            raise ConfigError(f"query vectors have shape {vectors.shape}, the datastore needs (nq, {state.ds.dim})")
        self._check_threshold(state, opts)
        keys = [row.tobytes() for row in vectors] if self.cache is not None else None
        run = self._cached(state, keys, len(vectors), opts, lambda rows: state.backend.search_vectors(
            vectors if rows is None else vectors[rows], opts.k, state.mask(opts)))
        self._say_if_short(state, run, opts)
        return self._cut(state, run, opts)

    # -- the shared path -----------------------------------------------------------------------------
    def _texts(self, state: _Snapshot, texts, opts: SearchOptions) -> Run:
        texts = check_queries(texts)
        check_hybrid_k(opts.k, self.config)
        self._check_threshold(state, opts)
        unique = list(dict.fromkeys(texts))  # each distinct text is embedded and searched once
        s, i = self._cached(state, unique if self.cache is not None else None, len(unique), opts,
                            lambda rows: state.backend.search_texts(
                                unique if rows is None else [unique[r] for r in rows], opts.k, state.mask(opts)))
        if len(unique) < len(texts):
            if self.cache is not None:  # a repeat in the batch is served like a cache hit: count it as one
                self.cache.count_repeats(len(texts) - len(unique))
            where = {t: n for n, t in enumerate(unique)}
            rows = np.array([where[t] for t in texts], dtype=np.int64)
            s, i = s[rows], i[rows]
        self._say_if_short(state, (s, i), opts)
        return self._cut(state, (s, i), opts)

    def _cached(self, state: _Snapshot, keys: list[Hashable] | None, n: int, opts: SearchOptions,
                compute: Callable[[np.ndarray | None], Run]) -> Run:
        """`compute(rows)` for the rows the cache does not hold (`compute(None)`: all, without a cache)."""
        if self.cache is None:
            return compute(None)
        settings, revision = opts.cache_key(), state.ds.revision
        full = [ResultCache.key(q, settings, revision) for q in keys]
        scores = np.full((n, opts.k), -np.inf, dtype=np.float32)
        ids = np.full((n, opts.k), -1, dtype=np.int64)
        missing = []
        for row, key in enumerate(full):
            hit = self.cache.get(key)
            if hit is None:
                missing.append(row)
            else:
                scores[row], ids[row] = hit
        if missing:
            with partial.recording() as left_out:
                s, i = compute(np.array(missing, dtype=np.int64))
            for j, row in enumerate(missing):
                scores[row], ids[row] = s[j], i[j]
                if not left_out:  # a partial answer (a shard left out) is not kept
                    self.cache.put(full[row], s[j], i[j])
        return scores, ids

    # -- saying why a list is short or empty -------------------------------------------------------------
    def _warn_once(self, key: Hashable, message: str, *args) -> None:
        """A warning the first time this retriever sees `key`, a debug line after: a caller that searches
        thousands of times (eval, RETRO neighbours) is told once."""
        if key in self._warned:
            log.debug(message, *args)
        else:
            self._warned.add(key)
            log.warning(message, *args)

    def _scale(self, state: _Snapshot):
        return self.config.score_scale(normalized=bool(state.ds.manifest["encoder"].get("normalize", True)))

    def _check_threshold(self, state: _Snapshot, opts: SearchOptions) -> None:
        """Warn when the threshold is above any score this retriever can give (e.g. 0.3 on RRF's ~0.03)."""
        if opts.threshold is None:
            return
        scale = self._scale(state)
        if scale.maximum is not None and opts.threshold > scale.maximum * (1 + 1e-3) + 1e-6:
            self._warn_once(("threshold", opts.threshold), "threshold %g is above the highest score a %s retriever "
                            "gives (%.4g): every hit is dropped; its scores are %s", opts.threshold, self._name(),
                            scale.maximum, scale.text)

    def _name(self) -> str:
        return f"hybrid {self.config.fusion}" if self.kind == "hybrid" else self.kind

    def _say_if_short(self, state: _Snapshot, run: Run, opts: SearchOptions) -> None:
        """Warn when queries got fewer than k hits although at least k passages pass the filters (BM25 when few
        passages share a query term; ANN, sharded), rather than returning short lists silently."""
        want = min(opts.k, state.allowed_count(opts))
        have = np.count_nonzero(run[1] != -1, axis=1)
        short = have < want
        if short.any():
            reason = _SHORT_REASON.get(self._name(), "")
            self._warn_once("short", "%s: %d of %d queries got fewer than k = %d hits (fewest %d), though %s passages "
                            "pass the filters%s", self._name(), int(short.sum()), len(short), opts.k, int(have.min()),
                            f"{state.allowed_count(opts):,}", f": {reason}" if reason else "")

    def _cut(self, state: _Snapshot, run: Run, opts: SearchOptions) -> Run:
        if opts.threshold is not None:
            best = run[0][:, 0]
            run = threshold(run, opts.threshold)
            emptied = np.isfinite(best) & (run[1][:, 0] == -1)
            if emptied.any():
                self._warn_once(("threshold-empty", opts.threshold), "threshold %g dropped every hit of %d of %d "
                                "queries (their best score: %.4g); %s scores are %s", opts.threshold,
                                int(emptied.sum()), len(emptied), float(best[emptied].max()), self._name(),
                                self._scale(state).text)
        if opts.adaptive is not None:
            a = opts.adaptive
            run = adaptive_k(run, max_drop=a.max_drop, max_ratio=a.max_ratio, min_k=a.min_k)
        return run


def make_retriever(ds, kind: str = "exact", **fields) -> Retriever:
    """`Retriever(ds, RetrieverConfig(kind, **fields))`: every field is checked before an index is opened."""
    return Retriever(ds, RetrieverConfig(kind, **fields))
