"""An LRU cache of search results, bounded in bytes and safe to share between threads.

A key is the query exactly as given (text, or a query vector's bytes: no case folding or whitespace
collapsing, since a cased encoder embeds "Apple" and "apple" differently), the search options that change
the answer and the datastore revision, so an update (add, delete, compact) never serves a stale entry;
`Retriever.refresh` also drops the old revision's entries. Values are the (scores, ids) rows of one query.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "hit_rate": self.hit_rate}


class ResultCache:
    def __init__(self, max_bytes: int = 64 << 20):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int | np.integer) or max_bytes <= 0:
            raise ConfigError(f"cache size must be a positive number of bytes, got {max_bytes!r}")
        max_bytes = int(max_bytes)
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats(max_bytes=max_bytes)

    @staticmethod
    def key(query: str | bytes, settings: Any, revision: int) -> tuple:
        """The key of one query's result: the query as given, the (hashable) settings, the revision."""
        return (query, settings, revision)

    def get(self, key: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0], entry[1]  # stored copies, never written to

    def count_repeats(self, n: int) -> None:
        """`n` queries answered by a repeat earlier in the same batch: hits that needed no lookup."""
        with self._lock:
            self.stats.hits += n

    def put(self, key: tuple, scores: np.ndarray, ids: np.ndarray) -> None:
        size = scores.nbytes + ids.nbytes + sys.getsizeof(key[0]) + 64  # 64: tuple and dict overhead
        if size > self.max_bytes:
            return
        scores, ids = scores.copy(), ids.copy()
        scores.flags.writeable = ids.flags.writeable = False
        with self._lock:
            if key in self._entries:
                self.stats.bytes -= self._entries.pop(key)[2]
            self._entries[key] = (scores, ids, size)
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes:
                _, (_, _, old) = self._entries.popitem(last=False)
                self.stats.bytes -= old
                self.stats.evictions += 1
            self.stats.entries = len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.stats.bytes = self.stats.entries = 0
