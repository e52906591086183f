"""Sharded search: partition the datastore, search every shard (or only the nearest), merge by score.

Partitions (`by`):
- `domain`: one shard per domain label;
- `kmeans`: spherical k-means centroids trained on a seeded sample; a passage goes to its nearest
  centroid, and a query can be routed to its `probe_shards` nearest centroids;
- `lsh`: similarity hashing with random hyperplanes (Charikar 2002): the sign pattern of b = log2(n)
  projections is the shard; queries are routed to the shards whose codes are nearest in Hamming distance.

Each shard is a `LocalShard` holding a faiss index over its own vectors (ids = global passage ids),
behind the two-method interface (`search(vectors, k, allowed)`, `add(ids, vectors)`). The per-shard step of
a search is `ShardedIndex.search_parts`, which `relm.distributed.search.RayShardedIndex` sends to one Ray
actor per shard; a build's per-shard step is `fill_shard` (one Ray task each in `relm.distributed.index`). Results are merged by score with
`merge_topk`; with exact (Flat) shards and every shard searched this equals unsharded exact search
(tested), since top-k of a union is the top-k of the per-part top-k's (MassiveDS Lemma A.1), up to the
order faiss gives passages tied at exactly the k-th score.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifacts import load_npy, read_json, save_npy_atomic
from ..config import _from_dict
from ..errors import ConfigError, DatastoreError
from .ann import vector_probe
from .ann_search import shard_reader, short_rows
from .exact import exact_search_subset
from .indexes import (
    check_k,
    check_probe,
    datastore_state,
    index_dir,
    index_transaction,
    is_staged,
    prepare_index_dir,
    read_index_config,
    stage_copy,
    write_faiss_index,
    write_index_config,
)
from .registry import build_config
from .topk import PAD_ID, merge_topk

log = logging.getLogger(__name__)

PARTITIONS = ("domain", "kmeans", "lsh")
BLOCK = 65536


@dataclass(frozen=True)
class ShardConfig:
    by: str = "kmeans"
    n_shards: int = 8
    factory: str = "Flat"  # faiss index_factory string for each shard
    seed: int = 0
    train_size: int = 100_000  # k-means sample

    def __post_init__(self):
        if self.by not in PARTITIONS:
            raise ConfigError(f"unknown partition {self.by!r}; choose from {list(PARTITIONS)}")
        if self.n_shards < 1:
            raise ConfigError(f"--shards must be >= 1, got {self.n_shards}")
        if self.by == "lsh" and self.n_shards & (self.n_shards - 1):
            raise ConfigError(f"lsh sharding needs a power-of-two shard count, got {self.n_shards}")


# -- partition functions (pure) -------------------------------------------------------------------
def lsh_codes(vectors: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Bucket of each vector: bit j is set when the vector lies on the positive side of hyperplane j."""
    bits = (vectors @ planes.T) > 0  # (n, b)
    return (bits * (1 << np.arange(planes.shape[0]))).sum(axis=1).astype(np.int64)


def hamming_order(query_codes: np.ndarray, n_bits: int) -> np.ndarray:
    """(nq, 2^b) shard ids of each query, nearest code (Hamming distance) first."""
    shards = np.arange(1 << n_bits)
    xor = query_codes[:, None] ^ shards[None, :]
    dist = np.zeros_like(xor)
    for j in range(n_bits):
        dist += (xor >> j) & 1
    return np.argsort(dist, axis=1, kind="stable")


def nearest_centroids(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, C) centroid ids of each vector, by decreasing inner product."""
    return np.argsort(-(vectors @ centroids.T), axis=1, kind="stable")


def filtered_probe(probe_shards: int | None, allowed: int, ntotal: int, n_shards: int) -> int | None:
    """Shards to probe under a filter allowing `allowed` of `ntotal` passages: probe_shards / p, at most
    every shard, so a query sees as many allowed passages as an unfiltered routed search sees passages
    (the widening `ann_search.filter_plan` applies to efSearch and nprobe). None: every shard."""
    if probe_shards is None or allowed >= ntotal:
        return probe_shards
    if allowed == 0:
        return min(probe_shards, n_shards)
    return min(n_shards, math.ceil(probe_shards * ntotal / allowed))


# -- shards -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackedFilter:
    """A filter as shards receive it: the allowed mask packed once into faiss's bitmap (1 bit per
    passage), shared by every shard of a search instead of re-packed by each."""

    n: int
    bits: np.ndarray

    @classmethod
    def of(cls, allowed: np.ndarray | PackedFilter | None) -> PackedFilter | None:
        if allowed is None or isinstance(allowed, PackedFilter):
            return allowed
        return cls(len(allowed), np.packbits(allowed, bitorder="little"))

    def selector(self):
        import faiss

        return faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(self.bits))


class LocalShard:
    """One shard: a faiss index over a subset of passages, ids = global passage ids."""

    def __init__(self, index):
        self.index = index

    @classmethod
    def create(cls, dim: int, factory: str) -> LocalShard:
        import faiss

        try:
            base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ConfigError(f"invalid shard factory {factory!r}: {str(e).splitlines()[-1]}") from e
        # IVF indexes store ids themselves; others need an id map
        index = base if hasattr(faiss, "try_extract_index_ivf") and faiss.try_extract_index_ivf(base) else \
            faiss.IndexIDMap2(base)
        return cls(index)

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | PackedFilter | None = None):
        """Top-k (scores, global passage ids); `allowed`: a boolean mask or a PackedFilter."""
        import faiss

        if self.index.ntotal == 0:
            return (np.full((len(vectors), k), -np.inf, np.float32), np.full((len(vectors), k), PAD_ID, np.int64))
        params = None
        packed = PackedFilter.of(allowed)
        if packed is not None:
            params = faiss.SearchParameters(sel=packed.selector())
            params._keep = packed  # the bitmap must outlive the search
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)
        scores = np.where(ids == PAD_ID, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    def save(self, path: Path) -> None:
        write_faiss_index(self.index, path)

    @classmethod
    def load(cls, path: Path) -> LocalShard:
        import faiss

        return cls(faiss.read_index(str(path)))


class ShardedIndex:
    """Shards of faiss indexes over a partition of the datastore (domain, k-means or LSH), searched and
    merged by score. Implements `relm.retrieval.registry.Index` (kind "sharded")."""

    kind = "sharded"

    def __init__(self, ds, name: str, config: dict, shards: list[LocalShard], routing: np.ndarray | None):
        self.ds, self.name, self.config, self.shards, self.routing = ds, name, config, shards, routing

    @property
    def path(self) -> Path:
        return index_dir(self.ds, self.name)

    @classmethod
    def open(cls, ds, name: str, *, check_fresh: bool = True) -> ShardedIndex:
        config = read_index_config(ds, name, check_fresh=check_fresh, kind="sharded")
        path = index_dir(ds, name)
        if check_fresh:
            check_probe(ds, config, name, vector_probe(ds, int(config["datastore"]["passages"])))
        shards = [LocalShard.load(path / f"shard-{s:04d}.faiss") for s in range(config["n_shards"])]
        routing = load_npy(path / "routing.npy", mmap=False) if (path / "routing.npy").exists() else None
        return cls(ds, name, config, shards, routing)

    @classmethod
    def rebuild(cls, view, saved: dict) -> None:
        build_sharded_index(view, saved["name"], _from_dict(ShardConfig, build_config(saved)), overwrite=True)

    @classmethod
    def update(cls, live, view, name: str) -> None:
        stage_copy(live, view, name)
        cls.open(view, name, check_fresh=False).add_new_vectors()

    def route(self, vectors: np.ndarray, probe_shards: int | None) -> np.ndarray:
        """(nq, p) shard ids to search for each query: all shards, or the p nearest by the partition."""
        n = self.n_shards
        if probe_shards is None or probe_shards >= n:
            return np.broadcast_to(np.arange(n), (len(vectors), n))
        if probe_shards < 1:
            raise ConfigError(f"--probe-shards must be >= 1, got {probe_shards}")
        return self.shard_order(vectors)[:, :probe_shards]

    def shard_order(self, vectors: np.ndarray) -> np.ndarray:
        """(nq, n_shards) every shard id for each query, nearest by the partition first."""
        by = build_config(self.config)["by"]
        if by == "kmeans":
            return nearest_centroids(vectors, self.routing)
        if by == "lsh":
            bits = self.routing.shape[0]
            return hamming_order(lsh_codes(vectors, self.routing), bits)
        raise ConfigError("domain shards cannot be routed by similarity; filter with --domain instead")

    def search(self, vectors: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               probe_shards: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the shards each query is routed to, merged by score. Under a filter allowing a
        fraction p of the passages, a query probes ceil(probe_shards / p) shards (`filtered_probe`), and
        one whose probed shards hold fewer than min(k, allowed passages) hits (a selective filter, small shards) visits its
        next-nearest shards one at a time until it has them; one still short after every shard (shards
        of an approximate factory) is searched exactly over the allowed set. A query with k hits from
        its probed shards gets exactly what routing alone gives."""
        k = check_k(k)
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        n_allowed = self.n_passages if allowed is None else int(np.count_nonzero(allowed))
        route = self.route(vectors, filtered_probe(probe_shards, n_allowed, self.n_passages, self.n_shards))
        out = (np.full((len(vectors), k), -np.inf, np.float32), np.full((len(vectors), k), PAD_ID, np.int64))
        packed = PackedFilter.of(allowed)  # packed once for every shard
        self._search_and_merge([(s, np.nonzero((route == s).any(axis=1))[0]) for s in range(self.n_shards)],
                               vectors, k, packed, out)
        need = min(k, n_allowed)
        if route.shape[1] < self.n_shards and len(short_rows(out[1], need)):
            order = self.shard_order(vectors)
            for step in range(route.shape[1], self.n_shards):  # each short row visits its next shard
                short = short_rows(out[1], need)
                if len(short) == 0:
                    break
                nxt = order[short, step]
                self._search_and_merge([(int(s), short[nxt == s]) for s in np.unique(nxt)], vectors, k, packed, out)
        short = short_rows(out[1], need)
        if len(short):
            ids = np.arange(len(self.ds)) if allowed is None else np.flatnonzero(allowed)
            log.debug("index %s: %d of %d queries short of %d hits after every shard; searched exactly",
                      self.name, len(short), len(vectors), need)
            out[0][short], out[1][short] = exact_search_subset(vectors[short], ids, k,
                                                               shard_reader(self.ds.embedding_shards))
        return out

    @property
    def n_passages(self) -> int:
        return sum(int(sh.index.ntotal) for sh in self.shards)

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def _search_and_merge(self, jobs: list[tuple[int, np.ndarray]], vectors: np.ndarray, k: int, packed, out) -> None:
        """Search shard s for the queries `rows` of each (s, rows) job and merge into `out` (scores, ids) in
        place. The merge is exact whatever order the parts come in (`merge_topk` breaks ties by id, and no
        passage is in two shards)."""
        jobs = [(s, rows) for s, rows in jobs if len(rows)]
        for (_, rows), part in zip(jobs, self.search_parts(jobs, vectors, k, packed), strict=True):
            if part is not None:  # None: a remote shard that did not answer (see relm.distributed)
                out[0][rows], out[1][rows] = merge_topk((out[0][rows], out[1][rows]), part, k)

    def search_parts(self, jobs: list[tuple[int, np.ndarray]], vectors: np.ndarray, k: int, packed) -> list:
        """(scores, ids) of shard s for vectors[rows], for each (s, rows) job: here one shard after
        another; a subclass fans out to remote shards (`relm.distributed.search.RayShardedIndex`)."""
        return [self.shards[s].search(vectors[rows], k, packed) for s, rows in jobs]

    def add_new_vectors(self) -> int:
        """Assign and add passages [ntotal, len(ds)) after `relm add`; no retraining. Domain shards
        gain a shard for each domain that appeared since the build."""
        start = int(self.config["datastore"]["passages"])
        before = [int(sh.index.ntotal) for sh in self.shards]
        generations = shard_generations(self.config)
        if build_config(self.config)["by"] == "domain" and len(self.ds.domains) > len(self.shards):
            self._add_domain_shards(start)
        added = _assign_and_add(self.ds, self.shards, self.config, self.routing, start)
        generation = int(self.ds.generation)
        for s, shard in enumerate(self.shards):  # only the shards that own new passages change
            if s >= len(before) or int(shard.index.ntotal) != before[s]:
                shard.save(self.path / f"shard-{s:04d}.faiss")
                generations[s:s + 1] = [generation]
        self.config["datastore"] = datastore_state(self.ds)
        self.config["shard_sizes"] = [int(sh.index.ntotal) for sh in self.shards]
        self.config["shard_generations"] = generations
        self.config["probe"] = vector_probe(self.ds, len(self.ds))
        write_index_config(self.path, {k: v for k, v in self.config.items() if k != "format_version"})
        return added

    def _add_domain_shards(self, start: int) -> None:
        """One new shard per new domain; a trainable shard factory learns on that domain's new passages."""
        new = self.ds.domains[len(self.shards):]
        factory = build_config(self.config)["factory"]
        ids = np.arange(start, len(self.ds), dtype=np.int64)
        codes = np.asarray(self.ds.doc_domain)[self.ds.doc_index[ids]] if len(ids) else np.zeros(0, np.int64)
        for code in range(len(self.shards), len(self.ds.domains)):
            shard = LocalShard.create(self.ds.dim, factory)
            if not shard.index.is_trained:
                mine = ids[codes == code]
                try:
                    shard.train(_vectors_of(self.ds, mine))
                except RuntimeError as e:
                    raise ConfigError(
                        f"index {self.name!r} (domain shards of {factory}) cannot train a shard for the new domain "
                        f"{self.ds.domains[code]!r} on its {len(mine)} passages ({e}); remove the index "
                        f"(`relm index {self.ds.root} --remove {self.name}`) and build it again after the add"
                    ) from e
            self.shards.append(shard)
        self.config["n_shards"] = len(self.shards)
        self.config["shard_names"] = [*self.config["shard_names"], *new]
        log.info("index %s: new domain shard(s) %s", self.name, new)


def shard_generations(config: dict) -> list[int]:
    """The datastore generation at which each shard last changed (its build, or the add that gave it
    passages): a shard's file is the same while its entry is, which is how remote shards know to reload.
    An index built before the field existed reads as changed at its datastore's generation."""
    n = int(config["n_shards"])
    saved = config.get("shard_generations")
    if saved is None or len(saved) != n:
        return [int(config["datastore"]["generation"])] * n
    return [int(g) for g in saved]


def _vectors_of(ds, ids: np.ndarray) -> np.ndarray:
    return ds.embeddings(ids).astype(np.float32)


def _vectors(ds, start: int, stop: int) -> np.ndarray:
    return ds.embeddings(np.arange(start, stop)).astype(np.float32)


def _assignment(ds, config: dict, routing: np.ndarray | None, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    by = build_config(config)["by"]
    if by == "domain":
        return np.asarray(ds.doc_domain)[ds.doc_index[ids]].astype(np.int64)
    if by == "kmeans":
        return nearest_centroids(vectors, routing)[:, 0]
    return lsh_codes(vectors, routing)


def _assign_and_add(ds, shards, config, routing, start: int) -> int:
    added = 0
    for b0 in range(start, len(ds), BLOCK):
        b1 = min(b0 + BLOCK, len(ds))
        ids = np.arange(b0, b1, dtype=np.int64)
        vectors = _vectors(ds, b0, b1)
        where = _assignment(ds, config, routing, ids, vectors)
        if where.max(initial=0) >= len(shards):
            raise DatastoreError(f"internal: passage assigned to shard {where.max()} of {len(shards)}")
        for s in np.unique(where):
            sel = where == s
            shards[s].add(ids[sel], vectors[sel])
        added += b1 - b0
    return added


@dataclass
class ShardPlan:
    """What every shard of a build shares: the shard count, the routing (k-means centroids or LSH planes),
    the config saved with it, and the training sample of trainable shard factories (sorted passage ids)."""

    n_shards: int
    routing: np.ndarray | None
    partial: dict
    train_ids: np.ndarray | None


def plan_shards(ds, config: ShardConfig) -> ShardPlan:
    """The partition of a sharded index (k-means trained here, on a seeded sample), drawn in the one order
    that both the one-pass build and per-shard builds (`fill_shard`) use, so they agree byte for byte."""
    rng = np.random.default_rng(config.seed)
    n_shards = len(ds.domains) if config.by == "domain" else config.n_shards
    routing = None
    if config.by == "kmeans":
        import faiss

        sample = np.sort(rng.choice(len(ds), size=min(len(ds), config.train_size), replace=False))
        if len(sample) < n_shards:
            raise ConfigError(f"{len(ds)} passages cannot fill {n_shards} k-means shards")
        km = faiss.Kmeans(ds.dim, n_shards, niter=20, seed=config.seed, spherical=True, verbose=False)
        km.train(ds.embeddings(sample).astype(np.float32))
        routing = km.centroids.copy()
    elif config.by == "lsh":
        bits = int(np.log2(n_shards))
        routing = rng.standard_normal((bits, ds.dim)).astype(np.float32)
    partial = {"type": "sharded", "config": asdict(config), "n_shards": n_shards}
    train_ids = None
    if not LocalShard.create(ds.dim, config.factory).index.is_trained:
        # trainable shard indexes (IVF, PQ) learn on a sample of their own passages
        train_ids = np.sort(rng.choice(len(ds), size=min(len(ds), config.train_size), replace=False))
    return ShardPlan(n_shards, routing, partial, train_ids)


def assign_passages(ds, plan: ShardPlan) -> np.ndarray:
    """(n_passages,) the shard of every passage, computed in blocks of BLOCK vectors."""
    where = np.empty(len(ds), dtype=np.int32)
    for b0 in range(0, len(ds), BLOCK):
        b1 = min(b0 + BLOCK, len(ds))
        ids = np.arange(b0, b1, dtype=np.int64)
        where[b0:b1] = _assignment(ds, plan.partial, plan.routing, ids, _vectors(ds, b0, b1))
    return where


def fill_shard(ds, plan: ShardPlan, s: int, where: np.ndarray) -> LocalShard:
    """Shard s alone, trained and filled exactly as the one-pass build fills it (same training vectors,
    same passages in the same order): what each parallel task of a distributed index build runs."""
    shard = LocalShard.create(ds.dim, plan.partial["config"]["factory"])
    if plan.train_ids is not None:
        mine = plan.train_ids[where[plan.train_ids] == s]
        shard.train(_vectors_of(ds, mine))
    for b0 in range(0, len(ds), BLOCK):
        ids = b0 + np.flatnonzero(where[b0:b0 + BLOCK] == s)
        if len(ids):
            shard.add(ids.astype(np.int64), _vectors_of(ds, ids))
    return shard


def build_sharded_index(ds, name: str, config: ShardConfig = ShardConfig(), *, overwrite: bool = False,
                        build_shards: Callable[[ShardPlan, Path], None] | None = None) -> ShardedIndex:
    """Partition, train and fill the shards; built beside the live index and swapped in by one commit.
    `build_shards(plan, path)` writes every `shard-NNNN.faiss` under `path` (default: one pass over the
    vectors here; `relm.distributed.index` builds the shards in parallel Ray tasks, byte-identical)."""
    if not is_staged(ds):
        with index_transaction(ds) as view:
            build_sharded_index(view, name, config, overwrite=overwrite, build_shards=build_shards)
        return ShardedIndex.open(ds, name)
    t0 = time.perf_counter()
    plan = plan_shards(ds, config)
    path = prepare_index_dir(ds, name, overwrite)
    if build_shards is None:
        shards = [LocalShard.create(ds.dim, config.factory) for _ in range(plan.n_shards)]
        if plan.train_ids is not None:
            vectors = ds.embeddings(plan.train_ids).astype(np.float32)
            where = _assignment(ds, plan.partial, plan.routing, plan.train_ids, vectors)
            for s, shard in enumerate(shards):
                shard.train(vectors[where == s])
        _assign_and_add(ds, shards, plan.partial, plan.routing, 0)
        for s, shard in enumerate(shards):
            shard.save(path / f"shard-{s:04d}.faiss")
    else:
        build_shards(plan, path)
        shards = [LocalShard.load(path / f"shard-{s:04d}.faiss") for s in range(plan.n_shards)]
    if plan.routing is not None:
        save_npy_atomic(path / "routing.npy", plan.routing)
    n_shards = plan.n_shards
    config_json = {
        "type": "sharded",
        "name": name,
        **plan.partial,
        "shard_names": ds.domains if config.by == "domain" else [f"shard-{s:04d}" for s in range(n_shards)],
        "shard_sizes": [int(sh.index.ntotal) for sh in shards],
        "shard_generations": [int(ds.generation)] * n_shards,
        "build_seconds": time.perf_counter() - t0,
        "datastore": datastore_state(ds),
        "probe": vector_probe(ds, len(ds)),
    }
    write_index_config(path, config_json)
    log.info("sharded index %s: %d shards, sizes %s", name, n_shards, config_json["shard_sizes"])
    return ShardedIndex(ds, name, read_json(path / "config.json"), shards, plan.routing)
