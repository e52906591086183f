"""`evaluate_index`: recall of any index against its exact counterpart, with or without a filter.

    faiss    against exact dense search (`ann_tune.evaluate_ann_index`)
    sharded  against exact dense search, with the index's routing (`probe_shards`)
    bm25     against exact BM25: bm25s's full score vector of every passage (`BM25Index.score_all`),
             masked by the filter; ties at the k-th score count as found (`recall_with_ties`). Checks
             the index's top-k selection, its filter and its padding (bm25s scores exhaustively)

    recall@k = mean over queries of |A_k ∩ E_k| / |E_k|   (padding never counts; E_k may hold fewer
               than k hits: BM25 matches only passages sharing a query term, a filter may allow fewer)

Queries: `ann_tune.QuerySet` (held-out text from a file, or a passage sample: for BM25 the sampled
passages' text, which both sides find).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .ann_tune import QuerySet, evaluate_ann_index, evaluate_dense, timed
from .indexes import index_dir, read_index_config
from .topk import topk

KS = (1, 10, 100)


def evaluate_index(ds, name: str, *, queries_file: str | None = None, n_queries: int = 1000, seed: int = 0,
                   n_single: int = 200, allowed: np.ndarray | None = None, probe_shards: int | None = None,
                   **knobs) -> dict[str, Any]:
    """The report of index NAME of `ds` (module docstring); `knobs` (nprobe, ef_search, refine_factor)
    override a faiss index's stored search defaults."""
    kind = read_index_config(ds, name)["type"]
    if probe_shards is not None and kind != "sharded":
        raise ConfigError(f"--probe-shards applies to sharded indexes; {name!r} is a {kind} index")
    if knobs and kind != "faiss":
        raise ConfigError(f"--{'/--'.join(k.replace('_', '-') for k in knobs)} apply to faiss indexes; "
                          f"{name!r} is a {kind} index")
    common = dict(queries_file=queries_file, n_queries=n_queries, seed=seed, n_single=n_single, allowed=allowed)
    if kind == "faiss":
        return evaluate_ann_index(ds, name, **common, **knobs)
    if kind == "sharded":
        return evaluate_sharded_index(ds, name, probe_shards=probe_shards, **common)
    if kind == "bm25":
        return evaluate_bm25_index(ds, name, **common)
    raise ConfigError(f"index {name!r} is of type {kind!r}; index-eval measures faiss, sharded and bm25 indexes")


def evaluate_sharded_index(ds, name: str, *, queries_file=None, n_queries=1000, seed=0, n_single=200,
                           allowed=None, probe_shards=None) -> dict[str, Any]:
    from .sharding import ShardedIndex, filtered_probe

    index = ShardedIndex.open(ds, name)
    queries = QuerySet.of(ds, queries_file, n_queries, seed)
    report = evaluate_dense(ds, lambda v, k: index.search(v, k, allowed=allowed, probe_shards=probe_shards),
                            queries, allowed, n_single=n_single)
    size = sum(p.stat().st_size for p in index_dir(ds, name).glob("shard-*.faiss"))
    config = index.config["config"]
    return {
        "type": "sharded", "name": name, "factory": config["factory"], "partition": config["by"],
        "n_shards": len(index.shards),
        "search": {"probe_shards": probe_shards or len(index.shards),
                   "probed under the filter": filtered_probe(probe_shards, report["allowed"], index.n_passages,
                                                             len(index.shards)) or len(index.shards)},
        **report, "index_bytes": size, "bytes_per_vector": size / max(index.n_passages, 1),
    }


def exact_bm25(index, texts: list[str], k: int, allowed: np.ndarray | None) -> np.ndarray:
    """Top-k ids by exact BM25 over every passage (one full score vector per query), hits only."""
    out = np.full((len(texts), k), -1, dtype=np.int64)
    for q, scores in enumerate(index.score_all(texts)):
        out[q] = topk(hit_scores(scores, allowed)[None, :], k)[1][0]
    return out


def hit_scores(scores: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Full BM25 scores with non-hits (score ≤ 0, or not allowed) at -inf."""
    ok = scores > 0 if allowed is None else (scores > 0) & allowed
    return np.where(ok, scores, -np.inf).astype(np.float32)


def recall_with_ties(approx: np.ndarray, scores: np.ndarray, k: int) -> float:
    """One query's recall@k against exact full `scores` (-inf: not a hit), ties counted as found:
    |{a ∈ A_k : s(a) ≥ s_(k)}| / |E_k|, s_(k) the k-th best exact score. BM25 ties often (equal term
    counts and lengths), and which of the passages tied at the k-th score make the cut is arbitrary."""
    e = min(k, int(np.isfinite(scores).sum()))
    if e == 0:
        return 1.0
    kth = np.partition(scores, len(scores) - e)[len(scores) - e]
    a = approx[:k][approx[:k] >= 0]
    return min(int((scores[a] >= kth).sum()), e) / e


def evaluate_bm25_index(ds, name: str, *, queries_file=None, n_queries=1000, seed=0, n_single=200,
                        allowed=None) -> dict[str, Any]:
    from .bm25 import BM25Index

    index = BM25Index.open(ds, name)
    if queries_file:
        queries = QuerySet.from_file(ds, queries_file, n_queries, seed, embed=False)
    else:
        ids = QuerySet.sample(ds, n_queries, seed).self_ids
        queries = QuerySet(f"{len(ids):,} datastore passages' text", [ds.passage(int(i)) for i in ids], None)
    texts = queries.texts
    n_allowed = len(ds) if allowed is None else int(np.count_nonzero(allowed))
    ks = [r for r in KS if r <= len(ds)]
    runs = {r: index.search(texts, r, allowed=allowed)[1] for r in ks}
    found = {r: [] for r in ks}
    matched = 0
    for q, scores in enumerate(index.score_all(texts)):  # one full score vector at a time
        scores = hit_scores(scores, allowed)
        matched += bool(np.isfinite(scores).any())
        for r in ks:
            found[r].append(recall_with_ties(runs[r][q], scores, r))
    recalls = {f"recall@{r}": float(np.mean(found[r])) for r in ks}
    _, seconds = timed(lambda: index.search(texts, 10, allowed=allowed))
    _, one = timed(lambda: [index.search([t], 10, allowed=allowed, n_threads=1) for t in texts[:n_single]])
    size = sum(p.stat().st_size for p in Path(index_dir(ds, name)).rglob("*") if p.is_file())
    return {
        "type": "bm25", "name": name, "factory": f"bm25s {index.config.method} k1={index.config.k1} b={index.config.b}",
        "queries": queries.source, "n_queries": len(texts), "allowed": n_allowed,
        "matched": matched / max(len(texts), 1),  # queries with at least one hit
        **recalls,
        "qps_batched": len(texts) / max(seconds, 1e-9), "qps_single": min(n_single, len(texts)) / max(one, 1e-9),
        "index_bytes": size, "bytes_per_vector": size / max(len(ds), 1),
    }
