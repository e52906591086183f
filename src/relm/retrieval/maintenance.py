"""Keeping indexes in step with their datastore: after `relm add`, after `relm compact`, on demand.

Every index type implements `relm.retrieval.registry.Index` (`rebuild`, `update`); this module is a
loop over the registry. Nothing here writes a live index. Each function stages the new version of every index it touches in
a writer's view (`Datastore.view` / `index_transaction`) and the caller's one journaled commit swaps
them in together with the datastore's own files: an add updates every index or none.

- after an add: faiss and sharded indexes get the new vectors (no retraining; domain shards gain a
  shard per new domain); BM25 is re-scored in full, since its scores depend on corpus-wide IDF and the
  average passage length (bm25s stores precomputed per-posting scores), but only the new passages are
  tokenized: the old ones' term ids are saved in the index (`bm25.update_bm25_index`, identical to a
  rebuild; the cost is measured in benchmarks/update_cost.py);
- after a compaction (passage ids renumbered): every index is rebuilt from its stored config, with
  its knobs, and re-tuned to the same target when it was tuned;
- `refresh_indexes`: every stale index brought up to date (appended to when it can be, else rebuilt);
- `remove_index`: an index deleted by a journaled commit.
"""

from __future__ import annotations

import logging

from ..errors import DatastoreError, RelmError
from .indexes import check_name, datastore_state, index_transaction, list_indexes, live_index_dir
from .registry import index_type

log = logging.getLogger(__name__)


def is_fresh(ds, config: dict) -> bool:
    built, now = config["datastore"], datastore_state(ds)
    return built["passages"] == now["passages"] and built["generation"] == now["generation"]


def _named(name: str, e: Exception, fix: str) -> DatastoreError:
    return DatastoreError(f"index {name!r}: {e}; {fix}")


def update_indexes(live, view, *, configs: list[dict] | None = None) -> list[str]:
    """Stage every index of `live` brought up to date with the appended passages of `view` (a writer's
    view of the datastore after the add). Raises, naming the index, when one cannot be: then nothing
    is committed. Returns the names staged."""
    touched = []
    for config in list_indexes(live) if configs is None else configs:
        name = config["name"]
        if is_fresh(view, config):
            continue
        try:
            index_type(config["type"]).update(live, view, name)
        except RelmError as e:
            raise _named(name, e, f"nothing was added; remove the index (`relm index {live.root} --remove {name}`) "
                                  "or rebuild it, then add again") from e
        touched.append(name)
    return touched


def rebuild_index(view, config: dict) -> None:
    """Rebuild index config["name"] in `view` exactly as it was built (and re-tune it if it was tuned)."""
    index_type(config["type"]).rebuild(view, config)


def _appendable(ds, config: dict) -> bool:
    """A faiss or sharded index whose vectors are a prefix of the datastore's (only appended to since)."""
    if config["type"] not in ("faiss", "sharded") or config["datastore"]["passages"] > len(ds):
        return False
    from .ann import vector_probe

    n = int(config.get("ntotal", config["datastore"]["passages"]))
    return config.get("probe") is not None and vector_probe(ds, n) == config["probe"]


def refresh_indexes(ds, *, wait: bool = False) -> list[str]:
    """Bring every stale index of `ds` up to date in one commit; returns the names refreshed."""
    stale = [c for c in list_indexes(ds) if not is_fresh(ds, c)]
    if not stale:
        return []
    with index_transaction(ds, wait=wait) as view:
        for config in stale:
            if _appendable(ds, config):
                update_indexes(ds, view, configs=[config])
            else:
                try:
                    rebuild_index(view, config)
                except RelmError as e:
                    raise _named(config["name"], e, "nothing was changed") from e
    return [c["name"] for c in stale]


def remove_index(ds, name: str, *, wait: bool = False) -> None:
    """Delete index NAME by a journaled commit (readers that opened it keep their copy)."""
    from ..datastore import journal
    from ..datastore.lock import writer_lock

    check_name(name)
    with writer_lock(ds.root, wait=wait):
        journal.recover(ds.root)
        path = live_index_dir(ds, name)
        if not path.exists():
            have = ", ".join(c["name"] for c in list_indexes(ds)) or "none"
            raise DatastoreError(f"{ds.root}: no index named {name!r} to remove (have: {have})")
        journal.commit(ds.root, journal.Journal(deletes=[path.relative_to(ds.root).as_posix()]))


def compact_and_reindex(ds, *, wait: bool = False):
    """Compact the datastore (drop tombstoned documents), rebuilding its indexes in the same commit.
    Returns (ds, rebuilt names)."""
    from ..datastore.update import compact

    names = [c["name"] for c in list_indexes(ds)]
    new = compact(ds, wait=wait)
    return new, (names if new.generation != ds.generation else [])
