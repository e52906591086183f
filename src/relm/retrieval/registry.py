"""The Index protocol and the registry of index types: what `relm index`, maintenance and the
Retriever know about an index, whatever kind it is.

Every `DS/indexes/NAME/config.json` holds at least `{"type", "name", "config", "datastore"}`: the type
(a key of `INDEX_TYPES`), the build config (the type's config dataclass as a dict, rebuilt with its
`from_dict`, which refuses unknown keys), and the datastore state it was built from (passages,
generation, revision, encoder fingerprint, dim). Indexes written before the "config" key existed kept
it under "ann_config", "params" or "partition"; `build_config` reads both.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Protocol

import numpy as np

from ..errors import DatastoreError

SearchResult = tuple[np.ndarray, np.ndarray]


class Index(Protocol):
    """An opened index over a datastore. Dense indexes search vectors, BM25 searches texts; every
    search returns (scores, passage ids), best first, padded with (-inf, -1), masked by `allowed`."""

    kind: ClassVar[str]
    name: str
    config: dict[str, Any]

    @classmethod
    def open(cls, ds, name: str, *, check_fresh: bool = True) -> Index: ...

    @classmethod
    def build(cls, ds, name: str, config: dict[str, Any], *, overwrite: bool = False) -> Index:
        """Build index NAME from a saved build config (in staging when `ds` is a writer's view)."""
        ...

    @classmethod
    def update(cls, live, view, name: str) -> None:
        """Stage index NAME of `live` brought up to date with the passages `view` appended."""
        ...

    def search(self, queries, k: int, *, allowed: np.ndarray | None = None, **knobs) -> SearchResult: ...


INDEX_TYPES: dict[str, tuple[str, str]] = {
    "faiss": ("relm.retrieval.ann", "AnnIndex"),
    "bm25": ("relm.retrieval.bm25", "BM25Index"),
    "sharded": ("relm.retrieval.sharding", "ShardedIndex"),
}
_OLD_KEYS = {"faiss": "ann_config", "bm25": "params", "sharded": "partition"}


def index_type(kind: str) -> type[Index]:
    if kind not in INDEX_TYPES:
        raise DatastoreError(f"unknown index type {kind!r}; this relm knows {sorted(INDEX_TYPES)}")
    module, name = INDEX_TYPES[kind]
    return getattr(importlib.import_module(module), name)


def build_config(config: dict[str, Any]) -> dict[str, Any]:
    """The build config saved in an index's config.json (new layout, or the key older indexes used)."""
    kind = config.get("type")
    value = config.get("config", config.get(_OLD_KEYS.get(kind, ""), None))
    if not isinstance(value, dict):
        raise DatastoreError(f"index {config.get('name')!r}: its config.json has no build config; rebuild it")
    return value
