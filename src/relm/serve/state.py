"""`ServerState`: what one server process holds: the datastore's retrievers, the LM, readiness, metrics.

Loading (`load`) opens the datastore, its indexes and the LM once; it may run in a background thread while
/health already answers (`ready` False until it ends; `error` if it failed). The retrievers follow the
datastore's updates: `refresh()` (at most every `refresh_s` seconds, before a search batch and before a
generation) moves each one to a new revision after a `relm add`; a search in flight finishes on the
revision it started with, and a refresh that fails (a commit half-way) keeps the old one and retries later.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ConfigError, RelmError
from .config import ServeConfig
from .errors import NotReady
from .metrics import Metrics

log = logging.getLogger(__name__)
HIT_FIELDS = ("passage_id", "score", "text", "doc_index", "doc_id", "domain", "title", "timestamp", "source",
              "metadata")


def hit_row(hit) -> dict[str, Any]:
    """`Hit.to_dict()` without its deep copy (asdict was two thirds of a batch's time beside BM25), the
    metadata's NaN/inf as null (JSON has none)."""
    from ..cli.search import strict_json
    from ..corpus.documents import format_timestamp

    row = {name: getattr(hit, name) for name in HIT_FIELDS}
    row["timestamp"] = format_timestamp(hit.timestamp)
    if row["metadata"]:
        row["metadata"] = strict_json(row["metadata"])[0]
    return row



class HitRows(list):
    """One query's hits as dicts, and `left_out`: the shards a partial search left out (empty: none)."""

    def __init__(self, rows, left_out: list[str]):
        super().__init__(rows)
        self.left_out = list(left_out)

class ServerState:
    """See the module docstring. `datastore` and `lm` may be given already open (tests, notebooks)."""

    def __init__(self, config: ServeConfig, *, datastore=None, lm=None, api_key: str | None = None):
        self.config = config
        self.api_key = api_key
        self.ready = False
        self.error: str | None = None
        self.lm = lm
        self._ds = datastore
        self._given_lm = lm is not None
        self.retrievers: dict[str, Any] = {}
        self._kinds_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self.loaded_at: float | None = None
        self.metrics = Metrics(self.cache_stats)
        self.gen_pool = ThreadPoolExecutor(config.gen_threads, thread_name_prefix="relm-generate")
        self.ray_shards = None  # relm.distributed.search.RayShards when serving with --ray

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        """Open the datastore, its retriever and the LM (seconds to minutes); sets `ready` or `error`."""
        from ..datastore import Datastore
        from ..retrieval.options import RetrieverConfig
        from ..retrieval.retriever import Retriever

        t0 = time.perf_counter()
        try:
            rconfig = RetrieverConfig.from_dict(self.config.retriever)
            ds = self._ds if self._ds is not None else Datastore.open(self.config.datastore)
            if self.config.ray is None:
                retriever = Retriever(ds, rconfig)
            else:  # the sharded index's shards on Ray actors (relm.distributed imports Ray)
                from ..distributed import RayConfig
                from ..distributed.search import RayShards

                self.ray_shards = RayShards(RayConfig.from_dict(self.config.ray))
                retriever = self.ray_shards.retriever(ds, rconfig)
            if self.lm is None and self.config.lm is not None:
                from ..lm import LMConfig, load_lm

                self.lm = load_lm(LMConfig(model=self.config.lm, device=self.config.device))
            self.retrievers = {rconfig.kind: retriever}
            self.primary = rconfig.kind
        except RelmError as e:
            self.error = str(e)
            log.error("cannot serve %s: %s", self.config.datastore, e)
            raise
        except Exception as e:
            self.error = f"loading failed: {type(e).__name__}: {e}"
            log.exception("cannot serve %s", self.config.datastore)
            raise
        self.loaded_at = time.time()
        self.ready = True
        log.info("serving %s (revision %d, %s passages) with %s%s; loaded in %.1f s", ds.root, ds.revision,
                 f"{len(ds):,}", retriever.describe(), f" and LM {self.lm.name}" if self.lm is not None else
                 ", no LM (search only)", time.perf_counter() - t0)

    def check_ready(self) -> None:
        if self.error is not None:
            raise NotReady(f"the server could not load its datastore: {self.error}")
        if not self.ready:
            raise NotReady("the server is still loading its datastore and models; GET /health says when it is "
                           "ready")

    # -- retrievers ---------------------------------------------------------------------------------
    def retriever(self, kind: str | None = None):
        """The loaded retriever, or one of another `kind` on the same datastore (opened at first use)."""
        self.check_ready()
        kind = kind or self.primary
        if kind in self.retrievers:
            return self.retrievers[kind]
        from ..retrieval.options import RETRIEVERS

        if kind not in RETRIEVERS:
            raise ConfigError(f"unknown retriever {kind!r}; choose from {list(RETRIEVERS)}")
        with self._kinds_lock:
            if kind not in self.retrievers:
                base = self.retrievers[self.primary]
                try:
                    self.retrievers[kind] = base.with_kind(kind)
                except ConfigError as e:
                    raise ConfigError(f"retriever {kind!r} cannot be served here ({e}); this server searches "
                                      f"with {sorted(self.retrievers)}") from e
            return self.retrievers[kind]

    def refresh(self, force: bool = False) -> None:
        """Follow the datastore's updates (see the module docstring); cheap: one read of manifest.json."""
        now = time.monotonic()
        if not force and now - self._last_refresh < self.config.refresh_s:
            return
        if not self._refresh_lock.acquire(blocking=False):
            return  # another thread is refreshing; this request is answered from the current revision
        try:
            self._last_refresh = now
            for retriever in list(self.retrievers.values()):
                try:
                    retriever.refresh()
                except RelmError as e:  # e.g. a commit in progress: keep serving the revision we have
                    log.warning("staying on revision %d of %s for now: %s", retriever.ds.revision,
                                retriever.ds.root, e)
        finally:
            self._refresh_lock.release()

    @property
    def ds(self):
        return self.retrievers[self.primary].ds

    def search_rows(self, key: tuple[str, Any], texts: list[str]) -> list[HitRows]:
        """One retriever call for a batch: hits per text as JSON-ready dicts (NaN metadata as null), each
        list carrying the shards the search left out (`retrieval.partial`; empty: the answer is whole)."""
        from ..retrieval import partial

        kind, opts = key
        self.refresh()
        with partial.recording() as left_out:
            results = self.retriever(kind).search(texts, opts)
        return [HitRows((hit_row(h) for h in hits), left_out) for hits in results]

    # -- reporting ----------------------------------------------------------------------------------
    def cache_stats(self) -> tuple[int, int, int | None]:
        hits = misses = 0
        for r in list(self.retrievers.values()):
            if r.cache is not None:
                hits, misses = hits + r.cache.stats.hits, misses + r.cache.stats.misses
        return hits, misses, (self.ds.revision if self.ready else None)

    def info(self) -> dict[str, Any]:
        """`relm info DS --json` of the revision being served, and what this server does with it."""
        from ..cli.search import strict_json

        self.check_ready()
        serving = {"retrievers": {k: r.describe() for k, r in self.retrievers.items()}, "primary": self.primary,
                   "lm": None if self.lm is None else self.lm.name,
                   "config": {k: v for k, v in self.config.to_dict().items()},
                   "loaded_at": self.loaded_at}
        return strict_json({"datastore": self.ds.info(), "serving": serving})[0]

    def close(self) -> None:
        self.gen_pool.shutdown(wait=False, cancel_futures=True)
        if self.ray_shards is not None:
            self.ray_shards.close()
