"""What a search is, as data: `RetrieverConfig` (how to search) and `SearchOptions` (what to return).

    config = RetrieverConfig("hybrid", index="pq", bm25_index="bm25", fusion="rrf")   # saved with results
    opts = SearchOptions(k=10, before="2020-01-01", domains=("wiki",), threshold=0.3,
                         adaptive=AdaptiveK(max_drop=0.1))

Both are frozen dataclasses, checked when built, rebuilt from JSON with `from_dict` and hashable:
`SearchOptions` (less its threshold and adaptive k, which act on the cached run) is the result cache's key
and the request schema of a search service. Every `RetrieverConfig` field is a flag of `relm search`,
`relm eval` and `relm scale` (see `FLAGS` and `relm.cli.search.add_retriever_arguments`), except
`query_truncation`, which only `relm eval`/`relm scale` set (`--query-truncation`, default left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ..config import check_float, check_int
from ..encoders.base import TRUNCATE_SIDES
from ..errors import ConfigError
from .indexes import check_k

RETRIEVERS = ("exact", "ann", "bm25", "hybrid", "sharded")
FUSIONS = ("rrf", "interpolate", "hierarchical")
MAX_QUERY_CHARS = 100_000

# RetrieverConfig field -> its flag (commands where a flag means something else rename it, see the CLI)
FLAGS = {
    "kind": "--retriever", "index": "--index", "bm25_index": "--bm25-index", "fusion": "--fusion",
    "candidates": "--candidates", "alpha": "--alpha", "rrf_k": "--rrf-k", "nprobe": "--nprobe",
    "ef_search": "--ef-search", "refine_factor": "--refine", "probe_shards": "--probe-shards",
    "batch_size": "--batch-size", "cache_bytes": "--cache-mb",
}
_NUMBERS: dict[str, tuple[Callable, dict[str, Any]]] = {  # numeric fields and their ranges
    "candidates": (check_int, {"minimum": 1}),
    "alpha": (check_float, {"minimum": 0, "maximum": 1}),
    "rrf_k": (check_int, {"minimum": 0}),
    "nprobe": (check_int, {"minimum": 1, "optional": True}),
    "ef_search": (check_int, {"minimum": 1, "optional": True}),
    "refine_factor": (check_int, {"minimum": 1, "optional": True}),
    "probe_shards": (check_int, {"minimum": 1, "optional": True}),
    "batch_size": (check_int, {"minimum": 1}),
    "cache_bytes": (check_int, {"minimum": 0}),
}


def check_numbers(values: dict[str, Any], name: Callable[[str], str]) -> dict[str, Any]:
    """The numeric retriever settings in `values`, checked; errors name a field as `name(field)`
    (the config says "candidates (--candidates)", a command says its own flag)."""
    return {f: check(values[f], name(f), **kw) for f, (check, kw) in _NUMBERS.items() if f in values}


def check_queries(queries: str | Sequence[str]) -> list[str]:
    """Query texts as a list: one string or a sequence of non-blank strings of at most MAX_QUERY_CHARS."""
    queries = [queries] if isinstance(queries, str) else list(queries)
    if not queries:
        raise ConfigError("no queries given")
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise ConfigError("empty query; give some text to search for")
        if len(q) > MAX_QUERY_CHARS:
            raise ConfigError(f"query of {len(q)} characters exceeds {MAX_QUERY_CHARS}; shorten it")
    return queries


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
        hint = "" if "accepted:" in str(e) else f"; accepted: {TIMESTAMP_FORMATS}"
        raise ConfigError(f"{name} {value!r}: {e}{hint}") from e
    if ts is None:
        raise ConfigError(f"{name} is empty; accepted: {TIMESTAMP_FORMATS}")
    return ts


def _set(obj, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


def _from_dict(cls, d: dict[str, Any], what: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a {cls.__name__} or a dict of its fields, got {d!r}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {unknown}; known: {known}")
    return cls(**d)


@dataclass(frozen=True)
class AdaptiveK:
    """Retrieval adaptive k: cut each hit list where its scores say the relevant hits end
    (`fusion.adaptive_k`: before the largest score drop above `max_drop`, and/or below `max_ratio` x the
    best score; at least `min_k` kept). Not the `adaptive` eval variant, which gives each window a k from
    the LM's loss on its query (`eval.variants.k_from_query_loss`)."""

    max_drop: float | None = None
    max_ratio: float = 0.0
    min_k: int = 1

    def __post_init__(self):
        _set(self, "max_drop", check_float(self.max_drop, "adaptive max_drop (--adaptive-k GAP)", minimum=0,
                                           optional=True))
        _set(self, "max_ratio", check_float(self.max_ratio, "adaptive max_ratio", minimum=0, maximum=1))
        _set(self, "min_k", check_int(self.min_k, "adaptive min_k", minimum=0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdaptiveK:
        return _from_dict(cls, d, "adaptive")


@dataclass(frozen=True)
class Subsample:
    """Keep each passage with probability `fraction`, decided by a hash of (seed, passage id): the
    passages of a really subsampled datastore (MassiveDS; `subsample.kept_passages`)."""

    fraction: float
    seed: int = 0

    def __post_init__(self):
        fraction = check_float(self.fraction, "subsample fraction", minimum=0, maximum=1)
        if fraction == 0:
            raise ConfigError("subsample fraction must be in (0, 1], got 0")
        _set(self, "fraction", fraction)
        _set(self, "seed", check_int(self.seed, "subsample seed", minimum=0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subsample:
        return _from_dict(cls, d, "subsample")


@dataclass(frozen=True)
class SearchOptions:
    """One search's request: k hits per query, filters (`before`/`after` epoch seconds or ISO 8601, kept
    as epoch seconds; `domains`; a `subsample` of the datastore), then a score `threshold` and adaptive k.
    Tombstoned documents are always excluded."""

    k: int = 10
    before: int | None = None
    after: int | None = None
    domains: tuple[str, ...] = ()
    threshold: float | None = None
    adaptive: AdaptiveK | None = None
    subsample: Subsample | None = None

    def __post_init__(self):
        _set(self, "k", check_k(self.k))
        before, after = time_bound(self.before, "before"), time_bound(self.after, "after")
        if before is not None and after is not None and after >= before:
            raise ConfigError(f"after ({after}) must be earlier than before ({before}): no document can match")
        _set(self, "before", before)
        _set(self, "after", after)
        domains = (self.domains,) if isinstance(self.domains, str) else tuple(self.domains or ())
        for d in domains:
            if not isinstance(d, str) or not d:
                raise ConfigError(f"domains must be domain names, got {d!r}")
        _set(self, "domains", domains)
        _set(self, "threshold", check_float(self.threshold, "threshold (--threshold)", optional=True))
        if self.adaptive is not None:
            _set(self, "adaptive", AdaptiveK.from_dict(self.adaptive))
        if self.subsample is not None:
            _set(self, "subsample", Subsample.from_dict(self.subsample))

    @property
    def filters(self) -> tuple:
        """What decides which passages may be returned (the filter mask's cache key)."""
        return (self.before, self.after, self.domains, self.subsample)

    def cache_key(self) -> SearchOptions:
        """The options that change the cached run: threshold and adaptive k are applied after the cache."""
        return replace(self, threshold=None, adaptive=None) if self.threshold is not None or self.adaptive else self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["domains"] = list(self.domains)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchOptions:
        return _from_dict(cls, d, "search options")


def search_options(opts: SearchOptions | int | None = None, **kw) -> SearchOptions:
    """`SearchOptions` from what a search call was given: options, options plus overrides, or k and
    keyword options (`retriever.search(texts, 5, before=...)`)."""
    if opts is None:
        return SearchOptions(**kw)
    if isinstance(opts, SearchOptions):
        return replace(opts, **kw) if kw else opts
    if "k" in kw:
        raise ConfigError("k given twice (positionally and as k=)")
    return SearchOptions(k=opts, **kw)


@dataclass(frozen=True)
class ScoreScale:
    """What a retriever's scores are, and the highest it can give (None: unbounded)."""

    text: str
    maximum: float | None


@dataclass(frozen=True)
class RetrieverConfig:
    """How to search. `kind`: exact (the datastore's vectors), ann (a faiss index), bm25, hybrid (BM25 +
    dense: exact, or the ANN `index` when given) or sharded. `index` names the ANN or sharded index,
    `bm25_index` the BM25 index (for bm25, `index` is taken as the BM25 index when `bm25_index` is unset).
    Knobs: hybrid `fusion` (rrf, interpolate, hierarchical), `candidates` per run, interpolation `alpha`,
    `rrf_k`; ANN `nprobe`, `ef_search`, `refine_factor` (None: the index's tuned values); sharded
    `probe_shards`; query encoding `batch_size` and `query_truncation` (a query longer than the encoder
    reads keeps its start, "right", the encoder's own behaviour and `relm search`'s, or its end, "left":
    what `relm eval` uses, since an eval query is the text before the scored tokens); `cache_bytes` of
    results (0: no cache)."""

    kind: str = "exact"
    index: str | None = None
    bm25_index: str | None = None
    fusion: str = "rrf"
    candidates: int = 100
    alpha: float = 0.5
    rrf_k: int = 60
    nprobe: int | None = None
    ef_search: int | None = None
    refine_factor: int | None = None
    probe_shards: int | None = None
    batch_size: int = 64
    cache_bytes: int = 0
    query_truncation: str = "right"

    def __post_init__(self):
        if self.kind not in RETRIEVERS:
            raise ConfigError(f"unknown retriever {self.kind!r}; choose from {list(RETRIEVERS)}")
        if self.query_truncation not in TRUNCATE_SIDES:
            raise ConfigError(f"query_truncation (--query-truncation) must be one of {list(TRUNCATE_SIDES)}, "
                              f"got {self.query_truncation!r}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose from {list(FUSIONS)}")
        for name in ("index", "bm25_index"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{name} ({FLAGS[name]}) must be an index name, got {value!r}")
        for name, value in check_numbers(asdict(self), lambda f: f"{f} ({FLAGS[f]})").items():
            _set(self, name, value)
        if self.kind == "bm25" and self.bm25_index is None:
            _set(self, "bm25_index", self.index)
            _set(self, "index", None)
        if self.kind in ("ann", "sharded") and not self.index:
            raise ConfigError(f"--retriever {self.kind} needs --index NAME (list indexes with `relm info DS`)")
        if self.kind in ("bm25", "hybrid") and not self.bm25_index:
            flag = "--index" if self.kind == "bm25" else "--bm25-index"
            raise ConfigError(f"--retriever {self.kind} needs {flag} NAME (build one with `relm index DS --name "
                              "NAME --bm25`)")
        if self.kind in ("exact", "bm25") and self.index:
            raise ConfigError(f"--retriever {self.kind} takes no --index {self.index!r}; pass --retriever ann or "
                              "sharded to search it")

    def score_scale(self, normalized: bool = True) -> ScoreScale:
        """The scale of this retriever's raw scores, which `SearchOptions.threshold` is on (`normalized`: the
        datastore's embeddings are unit length, the default, so inner products are cosines)."""
        dense = (ScoreScale("cosine similarity (inner product of unit vectors), in [-1, 1]", 1.0) if normalized
                 else ScoreScale("inner product of unnormalized vectors, unbounded", None))
        if self.kind in ("exact", "ann", "sharded"):
            return dense
        if self.kind == "bm25":
            return ScoreScale("BM25, > 0 and unbounded (it grows with the matched query terms)", None)
        if self.fusion == "rrf":
            top = 2 / (self.rrf_k + 1)
            return ScoreScale(f"reciprocal rank fusion, the sum over dense and BM25 of 1 / ({self.rrf_k} + rank): "
                              f"in (0, 2/{self.rrf_k + 1} = {top:.4f}]", top)
        if self.fusion == "interpolate":
            return ScoreScale(f"{self.alpha} x min-max(dense) + {1 - self.alpha:g} x min-max(BM25), normalized per "
                              "query: in [0, 1]", 1.0)
        return replace(dense, text=f"{dense.text} (dense re-score of BM25's candidates)")

    @property
    def takes_vectors(self) -> bool:
        """Whether this kind searches query vectors (exact, ann, sharded); bm25 and hybrid need the text."""
        return self.kind in ("exact", "ann", "sharded")

    def with_kind(self, kind: str) -> RetrieverConfig:
        """This config for another kind, keeping its index names and knobs: the eval `hybrid` variant of an
        exact or ann retriever fuses that dense search with `bm25_index`."""
        if kind == self.kind:
            return self
        if kind == "hybrid" and self.kind == "sharded":
            raise ConfigError("hybrid fuses BM25 with exact or ANN search, not with a sharded index; use "
                              "--retriever exact or ann")
        return replace(self, kind=kind, index=self.index if kind in ("ann", "sharded", "hybrid") else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrieverConfig:
        return _from_dict(cls, d, "retriever config")

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults, kind first (a short description)."""
        default = RetrieverConfig()
        return {"kind": self.kind} | {f.name: getattr(self, f.name) for f in fields(self)
                                      if f.name != "kind" and getattr(self, f.name) != getattr(default, f.name)}
