"""A sharded index served by Ray actors, one per shard, searched by fan-out and merged exactly.

    shards = RayShards(RayConfig(shard_timeout_s=5))           # joins or starts Ray
    retriever = shards.retriever(ds, RetrieverConfig("sharded", index="km8", probe_shards=2))
    retriever.search(["a query"], SearchOptions(k=10))           # == the in-process sharded search
    retriever.refresh()                                          # after `relm add`: changed shards reload
    shards.close()

`RayShardedIndex` is `retrieval.sharding.ShardedIndex` with its one per-shard step (`search_parts`) sent
to the actors as futures: routing (`--probe-shards`), filters (one packed bitmap put in the object store
once per search and shared by every shard), the visits of short rows and the merge (`merge_topk`, ties by
id) are the local code, so the answers are the local answers. Each `ShardServer` opens its
`shard-NNNN.faiss` (memory-mapped where faiss can) and keeps the last two versions it was asked for,
keyed by the generation at which the shard last changed (`sharding.shard_generations`): after an add
only the shards that own new passages reload, and a search still running on the previous revision finds
its version. A shard that does not answer within `shard_timeout_s` (slow, or dead: Ray restarts a dead
actor, which reloads at its next call) fails the search, or with `on_shard_failure="partial"` is left out,
logged and counted (`RayShardedIndex.partial_searches`); the caller never waits longer than the timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatastoreError
from ..retrieval import partial
from ..retrieval.indexes import check_probe, index_dir, read_index_config
from ..retrieval.sharding import LocalShard, PackedFilter, ShardedIndex, shard_generations
from .runtime import RayConfig, init_ray

log = logging.getLogger(__name__)
KEEP_VERSIONS = 2  # the revision being served and the one before, for searches still running on it


class StaleShard(DatastoreError):
    """A shard was asked for a version that is no longer on disk (a newer commit replaced it)."""


class ShardServer:
    """The shard actor's body: one shard file of a sharded index, loaded per version on first use."""

    def __init__(self, index_path: str, shard: int, threads: int = 1):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.dir, self.shard = Path(index_path), shard
        self.versions: dict[int, LocalShard] = {}

    def pid(self) -> int:
        import os

        return os.getpid()

    def load(self, version: int) -> int:
        """Make `version` (the generation the shard last changed at) available; its number of vectors."""
        if version not in self.versions:
            self.versions[version] = self._read(version)
            for old in sorted(self.versions)[:-KEEP_VERSIONS]:
                del self.versions[old]
        return int(self.versions[version].index.ntotal)

    def search(self, version: int, vectors: np.ndarray, k: int, packed: PackedFilter | None):
        if version not in self.versions:
            self.load(version)
        return self.versions[version].search(vectors, k, packed)

    def _read(self, version: int) -> LocalShard:
        from ..artifacts import read_json
        from ..retrieval.ann import read_faiss_index

        for _ in range(3):  # the index directory is replaced whole by a commit: check the config around the read
            before = read_json(self.dir / "config.json")
            on_disk = shard_generations(before)[self.shard] if self.shard < before["n_shards"] else None
            if on_disk != version:
                raise StaleShard(f"{self.dir.name} shard {self.shard}: version {version} asked, {on_disk} on disk")
            index, _ = read_faiss_index(self.dir / f"shard-{self.shard:04d}.faiss", {"ivf": False})
            if read_json(self.dir / "config.json") == before:
                return LocalShard(index)
        raise StaleShard(f"{self.dir.name} shard {self.shard}: the index changed during three reads")


class RayShards:
    """The shard actors of sharded indexes (one pool per index directory) and Retrievers that search
    through them. Owns the actors: `close()` ends them."""

    def __init__(self, config: RayConfig = RayConfig()):
        self.config = config
        self.ray = init_ray(config)
        self._actors: dict[Path, list] = {}
        self._lock = threading.Lock()
        self._remote = self.ray.remote(ShardServer)

    def actors(self, path: Path, n_shards: int) -> list:
        """The actors of the index at `path`, started (or grown, for new domain shards) to n_shards."""
        with self._lock:
            pool = self._actors.setdefault(Path(path), [])
            for s in range(len(pool), n_shards):
                pool.append(self._remote.options(
                    max_restarts=-1, max_task_retries=0, num_cpus=self.config.shard_cpus,
                    scheduling_strategy="SPREAD").remote(str(path), s, self.config.shard_threads))
            return pool[:n_shards]

    def backends(self) -> dict[str, Any]:
        """The Retriever backends (`Retriever(ds, config, backends=...)`) that search through these actors."""
        return {"sharded": lambda ds, config: _RayBackend(ds, config, self)}

    def retriever(self, ds, config):
        from ..retrieval.retriever import Retriever

        if config.kind != "sharded" or not config.index:
            raise ConfigError("--ray searches a sharded index: pass --retriever sharded --index NAME "
                              "(built with `relm index DS --name NAME --shards N`)")
        return Retriever(ds, config, backends=self.backends())

    def close(self) -> None:
        with self._lock:
            for pool in self._actors.values():
                for actor in pool:
                    self.ray.kill(actor, no_restart=True)
            self._actors.clear()


class RayShardedIndex(ShardedIndex):
    """`ShardedIndex` whose shards are Ray actors; see the module docstring."""

    def __init__(self, ds, name: str, config: dict, routing, shards: RayShards):
        super().__init__(ds, name, config, [], routing)
        self.pool = shards
        self.versions = shard_generations(config)
        self.actors = shards.actors(self.path, self.n_shards)
        self.partial_searches = 0

    @classmethod
    def open(cls, ds, name: str, shards: RayShards) -> RayShardedIndex:
        from ..artifacts import load_npy
        from ..retrieval.ann import vector_probe

        config = read_index_config(ds, name, kind="sharded")
        check_probe(ds, config, name, vector_probe(ds, int(config["datastore"]["passages"])))
        path = index_dir(ds, name)
        routing = load_npy(path / "routing.npy", mmap=False) if (path / "routing.npy").exists() else None
        index = cls(ds, name, config, routing, shards)
        index.warm()
        return index

    @property
    def n_passages(self) -> int:
        return sum(int(n) for n in self.config["shard_sizes"])

    @property
    def n_shards(self) -> int:
        return int(self.config["n_shards"])

    def warm(self) -> None:
        """Every actor loads this revision's version of its shard (only changed shards read a file); waits
        at most the shard timeout, after which a shard still loading is reported by the search that needs it."""
        ray = self.pool.ray
        futures = [a.load.remote(v) for a, v in zip(self.actors, self.versions, strict=True)]
        done, _ = ray.wait(futures, num_returns=len(futures), timeout=self.pool.config.shard_timeout_s)
        for s, f in enumerate(futures):
            if f in done:
                try:
                    n = ray.get(f)
                except Exception as e:  # noqa: BLE001 (reported per shard, the search decides)
                    log.warning("index %s: shard %d could not load: %s", self.name, s, _reason(e))
                    continue
                if n != self.config["shard_sizes"][s]:
                    raise DatastoreError(f"index {self.name!r} shard {s}: the actor holds {n} vectors, the config "
                                         f"says {self.config['shard_sizes'][s]}; rebuild the index with --overwrite")

    def search_parts(self, jobs, vectors, k, packed):
        """The jobs' shard searches as futures, all in flight at once; each answer or its failure by the
        deadline. A failed shard raises, or (partial) gives None, which `_search_and_merge` leaves out."""
        ray, cfg = self.pool.ray, self.pool.config
        if not jobs:
            return []
        bits = ray.put(packed) if packed is not None else None  # one copy of the bitmap for every shard
        futures = [self.actors[s].search.remote(self.versions[s], vectors[rows], k, bits) for s, rows in jobs]
        deadline = time.monotonic() + cfg.shard_timeout_s
        done, _ = ray.wait(futures, num_returns=len(futures), timeout=cfg.shard_timeout_s)
        parts, failed = [], []
        for (s, _), f in zip(jobs, futures, strict=True):
            if f not in done:
                failed.append((s, f"did not answer within {cfg.shard_timeout_s:g} s"))
                try:
                    ray.cancel(f)
                except Exception:  # noqa: BLE001 (a running actor task may not be cancellable; it is dropped)
                    pass
                parts.append(None)
                continue
            try:
                parts.append(ray.get(f, timeout=max(0.0, deadline - time.monotonic()) + 1.0))
            except Exception as e:  # noqa: BLE001 (an actor died, restarted, or its task raised)
                failed.append((s, _reason(e)))
                parts.append(None)
        if failed:
            what = "; ".join(f"shard {s} {why}" for s, why in failed)
            if cfg.on_shard_failure == "error":
                raise DatastoreError(f"index {self.name!r}: {what} (--on-shard-failure partial returns the other "
                                     "shards' hits; --shard-timeout waits longer)")
            self.partial_searches += 1
            for s, why in failed:
                partial.report(f"index {self.name} shard {s} {why}")
            log.warning("index %s: partial results for %d queries: %s", self.name, len(vectors), what)
        return parts


def _reason(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    return f"failed: {type(cause or e).__name__}: {str(cause or e).splitlines()[0][:200]}"


class _RayBackend:
    """The Retriever's sharded backend over Ray actors (the local `_Sharded` with a `RayShardedIndex`)."""

    def __init__(self, ds, config, shards: RayShards):
        self.ds, self.batch_size, self.truncate = ds, config.batch_size, config.query_truncation
        self.index = RayShardedIndex.open(ds, config.index, shards)
        self.probe_shards = config.probe_shards

    def info(self) -> dict[str, Any]:
        return {"ray": True, "shards": self.index.n_shards, "partial_searches": self.index.partial_searches}

    def search_vectors(self, vectors, k, allowed):
        return self.index.search(vectors, k, allowed=allowed, probe_shards=self.probe_shards)

    def search_texts(self, texts, k, allowed):
        return self.search_vectors(self.ds.encode_queries(texts, self.batch_size, self.truncate), k, allowed)
