"""Tune and evaluate ANN indexes against exact search.

Queries are held-out text (`QuerySet.from_file`: a query file, or held-out documents cut into
passages), embedded with the datastore's encoder: the queries an index will be asked. Without a file,
the vectors of a seeded random sample of passages stand in; every one of them is in the index, so each
query's own passage is removed from both the exact and the approximate result lists before comparing
(recall measures how many true neighbours were found, not whether a vector finds itself), but their
neighbourhoods are the datastore's, not a new text's, so they flatter an index.
An `allowed` mask (`relm search`'s filters) restricts both the exact and the approximate search.

    recall@k = mean over queries of |A_k ∩ E_k| / |E_k|

(A_k: approximate top k, E_k: exact top k, both without the query's passage;
the intersection measure of faiss `contrib.evaluation` and ann-benchmarks.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .ann import INDEX_FILE, KIND, AnnIndex
from .exact import exact_search
from .indexes import check_k, index_dir, index_transaction, is_staged, stage_copy, write_index_config
from .topk import PAD_ID

log = logging.getLogger(__name__)

EF_GRID = (16, 32, 64, 128, 256, 512)
REFINE_GRID = (0, 2, 4, 8)
PLATEAU = 0.002  # stop raising a knob once recall gains less than this per doubling
QUERY_WORDS = 256  # held-out documents are cut into passages of the build's default size to serve as queries

Knobs = dict[str, int]


# -- pure pieces ------------------------------------------------------------------------------------


def query_texts(path: str, n_queries: int, seed: int, *, max_words: int = QUERY_WORDS) -> list[str]:
    """A seeded sample of n_queries texts from a query file (what `relm search --queries` reads), each
    text cut into passages of at most `max_words` words (`chunk_words`, as a build cuts documents), so a
    file of held-out documents yields held-out passages and a file of short queries its queries."""
    from ..corpus.chunking import chunk_words
    from ..corpus.queries import read_queries

    texts = [text[a:b] for _, text in read_queries(path) for a, b, _ in chunk_words(text, max_words)]
    if not texts:
        raise ConfigError(f"--queries {path}: no query text in it")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(texts), size=min(n_queries, len(texts)), replace=False))
    return [texts[i] for i in keep]


@dataclass(frozen=True)
class QuerySet:
    """Evaluation queries: texts (None for a passage sample), their vectors (nq, d) float32, and for a
    passage sample each query's own passage id (removed from every result list before comparing)."""

    source: str
    texts: list[str] | None
    vectors: np.ndarray | None
    self_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.vectors)

    @classmethod
    def from_file(cls, ds, path: str, n_queries: int, seed: int, *, embed: bool = True) -> QuerySet:
        texts = query_texts(path, n_queries, seed)
        vectors = ds.encode_queries(texts) if embed else None
        return cls(f"{len(texts):,} held-out passages of {path}", texts, vectors)

    @classmethod
    def sample(cls, ds, n_queries: int, seed: int) -> QuerySet:
        ids, vectors = sample_queries(ds, n_queries, seed)
        return cls(f"{len(ids):,} datastore passages (each without itself)", None, vectors, ids)

    @classmethod
    def of(cls, ds, path: str | None, n_queries: int, seed: int) -> QuerySet:
        return cls.from_file(ds, path, n_queries, seed) if path else cls.sample(ds, n_queries, seed)

    def run(self, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
        """Top-k ids of search(vectors, k), the query's own passage removed (searched with k + 1)."""
        if self.self_ids is None:
            return search(self.vectors, k)[1]
        s, i = search(self.vectors, k + 1)
        return drop_self(s, i, self.self_ids, k)[1]


def sample_queries(ds, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(passage ids (nq,), float32 vectors (nq, d)) of a seeded random sample of passages."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(len(ds), size=min(n_queries, len(ds)), replace=False))
    return ids, ds.embeddings(ids).astype(np.float32)


def drop_self(scores: np.ndarray, ids: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (self_ids[i]) and keep the first k others, order preserved.

    Rows searched with k + 1 keep k real neighbours whether or not the self-match was found.
    """
    keep = ids != self_ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept positions first, in rank order
    s = np.take_along_axis(scores, order, axis=1)
    i = np.take_along_axis(ids, order, axis=1)
    dropped = ~np.take_along_axis(keep, order, axis=1)  # only when a row had fewer than k others
    return np.where(dropped, -np.inf, s).astype(np.float32), np.where(dropped, PAD_ID, i)


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """mean_i |A_i[:k] ∩ E_i[:k]| / |E_i[:k]|; padding (-1) never counts."""
    a, e = approx[:, :k], exact[:, :k]
    found = ((a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)).any(axis=1).sum(axis=1)
    return float(np.mean(found / np.maximum((e >= 0).sum(axis=1), 1)))


def knob_chains(structure: dict[str, Any], refine_grid=REFINE_GRID, ef_grid=EF_GRID) -> list[list[Knobs]]:
    """The tuning grid as chains of settings ordered by rising cost (and recall).

    IVF: nprobe = 1, 2, 4, ... nlist, per refine factor (and, with an HNSW quantizer, per
    efSearch ≥ nprobe). HNSW: efSearch 16..512 per refine factor. Anything else: refine only.
    """
    chains: list[list[Knobs]] = []
    for r in refine_grid:
        if structure["ivf"]:
            nlist = structure["nlist"]
            probes = [2**i for i in range(int(np.log2(nlist)) + 1)]
            if structure["quantizer"] == "hnsw":
                for ef in ef_grid:
                    chains.append([{"nprobe": p, "ef_search": ef, "refine_factor": r} for p in probes if p <= ef])
            else:
                chains.append([{"nprobe": p, "refine_factor": r} for p in probes])
        elif structure["hnsw"]:
            chains.append([{"ef_search": ef, "refine_factor": r} for ef in ef_grid])
        else:
            chains.append([{"refine_factor": r}])
    return [c for c in chains if c]


def choose_setting(table: list[dict[str, Any]], target: float) -> tuple[dict[str, Any], bool]:
    """The highest-qps row reaching the target recall, else the best-recall row. -> (row, reached)."""
    feasible = [row for row in table if row["recall"] >= target]
    if feasible:
        return max(feasible, key=lambda r: (r["qps"], r["recall"])), True
    return max(table, key=lambda r: (r["recall"], r["qps"])), False


# -- measuring --------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def batched_qps(search: Callable[..., Any], queries: np.ndarray, k: int, **knobs) -> float:
    _, seconds = timed(lambda: search(queries, k, **knobs))
    return len(queries) / max(seconds, 1e-9)


def single_qps(search: Callable[..., Any], queries: np.ndarray, k: int, **knobs) -> float:
    def run():
        for q in queries:
            search(q[None, :], k, **knobs)

    _, seconds = timed(run)
    return len(queries) / max(seconds, 1e-9)


def ground_truth(ds, queries: QuerySet, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k ids per query over the allowed passages (a sample's own passage removed)."""
    return queries.run(lambda v, kk: exact_search(v, ds.embedding_shards, kk, allowed=allowed), k)


def measure(index: AnnIndex, queries: QuerySet, exact_ids, k: int, knobs: Knobs,
            allowed: np.ndarray | None = None) -> dict[str, Any]:
    """Recall@k and batched queries/s of one knob setting."""
    approx, seconds = timed(lambda: queries.run(lambda v, kk: index.search(v, kk, allowed=allowed, **knobs), k))
    return {**knobs, "recall": recall_at_k(approx, exact_ids, k), "qps": len(queries) / max(seconds, 1e-9)}


# -- tuning -----------------------------------------------------------------------------------------


def tune_ann_index(
    ds, name: str, *, target_recall: float = 0.95, k: int = 10, n_queries: int = 1000, seed: int = 0,
    queries_file: str | None = None,
) -> dict[str, Any]:
    """Measure recall@k and batched queries/s over the knob grid; store the cheapest setting that
    reaches `target_recall` (or, if none does, the best recall) as the index's search defaults.
    Queries: `n_queries` held-out passages of `queries_file` (`QuerySet.from_file`), or without one a
    sample of the datastore's own passages (module docstring).

    Each chain of settings (rising cost) stops once it reaches the target, once it is slower than
    the fastest setting already reaching it, or once recall stops improving.
    The new config is staged beside the live index and committed by one journal.
    """
    k = check_k(k)
    if not is_staged(ds):
        with index_transaction(ds) as view:
            stage_copy(ds, view, name)
            return tune_ann_index(view, name, target_recall=target_recall, k=k, n_queries=n_queries, seed=seed,
                                  queries_file=queries_file)
    t_start = time.perf_counter()
    index = AnnIndex.open(ds, name)
    queries = QuerySet.of(ds, queries_file, n_queries, seed)
    exact_ids = ground_truth(ds, queries, k)
    index.search(queries.vectors[:64], k)  # warm the page cache and faiss's thread pool
    table: list[dict[str, Any]] = []
    best_qps = 0.0
    for chain in knob_chains(index.structure):
        last = -1.0
        for knobs in chain:
            row = measure(index, queries, exact_ids, k, knobs)
            table.append(row)
            log.debug("tune %s: %s", name, row)
            if row["recall"] >= target_recall:
                best_qps = max(best_qps, row["qps"])
                break
            if row["qps"] < best_qps or row["recall"] - last < PLATEAU:
                break
            last = row["recall"]
    chosen, reached = choose_setting(table, target_recall)
    if not reached:
        log.warning(
            "index %r: no setting reaches recall@%d %.3f; using the best (%.3f at %.0f queries/s)",
            name, k, target_recall, chosen["recall"], chosen["qps"],
        )
    knobs = {key: chosen[key] for key in ("nprobe", "ef_search", "refine_factor") if key in chosen}
    result = {
        "target_recall": target_recall,
        "k": k,
        "n_queries": len(queries),
        "seed": seed,
        "queries_file": queries_file,
        "queries": queries.source,
        "reached": reached,
        "chosen": chosen,
        "table": table,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    config = {**index.config, "search": {**index.config["search"], **knobs}, "tuning": result}
    write_index_config(index_dir(ds, name), config)
    return result


# -- evaluation -------------------------------------------------------------------------------------


def evaluate_ann_index(
    ds, name: str, *, n_queries: int = 1000, seed: int = 0, n_single: int = 200, queries_file: str | None = None,
    allowed: np.ndarray | None = None, **knobs
) -> dict[str, Any]:
    """Recall@1/10/100 against exact search over the allowed passages, queries/s batched and one at a
    time (k = 10), index bytes on disk and per vector. `knobs` override the stored search defaults."""
    index = AnnIndex.open(ds, name)
    queries = QuerySet.of(ds, queries_file, n_queries, seed)
    size = (index_dir(ds, name) / INDEX_FILE).stat().st_size
    report = evaluate_dense(ds, lambda v, k: index.search(v, k, allowed=allowed, **knobs), queries, allowed,
                            n_single=n_single)
    return {
        "type": KIND,
        "name": name,
        "factory": index.config["factory"],
        "load_mode": index.load_mode,
        "search": {**index.defaults, **knobs},
        **report,
        "index_bytes": size,
        "bytes_per_vector": size / max(index.ntotal, 1),
    }


def evaluate_dense(ds, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], queries: QuerySet,
                   allowed: np.ndarray | None, *, n_single: int = 200) -> dict[str, Any]:
    """Recall@1/10/100 of `search(vectors, k)` against exact search over the allowed passages (each
    searched at k = r: refine, HNSW and routing depend on k), queries/s batched and one at a time (k 10)."""
    n_allowed = len(ds) if allowed is None else int(np.count_nonzero(allowed))
    kmax = min(100, n_allowed - (queries.self_ids is not None))
    if kmax < 1:
        raise ConfigError("evaluation needs at least two allowed passages (one with held-out --queries)")
    exact_ids = ground_truth(ds, queries, kmax, allowed)
    recalls = {f"recall@{r}": recall_at_k(queries.run(search, r), exact_ids, r) for r in (1, 10, 100) if r <= kmax}
    return {
        "queries": queries.source,
        "n_queries": len(queries),
        "allowed": n_allowed,
        **recalls,
        "qps_batched": batched_qps(search, queries.vectors, 10),
        "qps_single": single_qps(search, queries.vectors[:n_single], 10),
    }
