"""Keeping indexes in step with their datastore after `relm add` and `relm compact`.

- after an add: faiss and sharded indexes get the new vectors (no retraining); BM25 is rebuilt,
  since its IDF statistics are corpus-wide (bm25s has no incremental add);
- after a compaction (passage ids renumbered): every index is rebuilt from its stored config.
"""

from __future__ import annotations

import logging

from .indexes import datastore_state, list_indexes

log = logging.getLogger(__name__)


def _fresh(ds, config: dict) -> bool:
    built, now = config["datastore"], datastore_state(ds)
    return built["passages"] == now["passages"] and built["generation"] == now["generation"]


def update_indexes(ds) -> list[str]:
    """Bring every index of `ds` up to date after documents were appended; returns the names touched."""
    touched = []
    for config in list_indexes(ds):
        if _fresh(ds, config):
            continue
        name, kind = config["name"], config["type"]
        if kind == "faiss":
            from .ann import AnnIndex

            AnnIndex.open(ds, name, check_fresh=False).add_new_vectors(ds)
        elif kind == "sharded":
            from .sharding import ShardedIndex

            ShardedIndex.open(ds, name, check_fresh=False).add_new_vectors()
        elif kind == "bm25":
            _rebuild(ds, config)
        else:
            log.warning("index %r of unknown type %r left as it is", name, kind)
            continue
        touched.append(name)
    return touched


def _rebuild(ds, config: dict) -> None:
    name, kind = config["name"], config["type"]
    if kind == "bm25":
        from .bm25 import BM25Config, build_bm25_index

        build_bm25_index(ds, name, BM25Config.from_dict(config["params"]), overwrite=True)
    elif kind == "faiss":
        from .ann import AnnConfig, build_ann_index

        build_ann_index(ds, name, AnnConfig.from_dict(config["ann_config"]), overwrite=True)
    elif kind == "sharded":
        from .sharding import ShardConfig, build_sharded_index

        build_sharded_index(ds, name, ShardConfig(**config["partition"]), overwrite=True)
    else:
        raise ValueError(f"cannot rebuild index {name!r} of unknown type {kind!r}")


def compact_and_reindex(ds):
    """Compact the datastore (drop tombstoned documents) and rebuild its indexes. Returns (ds, rebuilt names)."""
    from ..datastore.update import compact

    configs = list_indexes(ds)
    if len(ds.deleted_documents) == 0:
        return ds, []
    ds = compact(ds)
    for config in configs:
        _rebuild(ds, config)
    return ds, [c["name"] for c in configs]
