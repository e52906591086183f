"""`SearchBatcher`: concurrent search requests gathered into one retriever call per identical options.

A request (a key, e.g. (retriever kind, SearchOptions), and its query texts) waits at most `window_s`
for others (not at all when it came alone: the request before it more than a window earlier and the last
batch a single request); a worker then takes the oldest request's key and every pending request with the same key, up
to `max_batch` queries (a single larger request goes alone), runs `run(key, texts)` once in a thread and
hands each request its own rows. While the `workers` threads are busy, requests keep gathering, so the
batch grows with the load instead of the queue. Rows are per query, so a request gets what it would get
alone (the batch only changes how many queries share one encoder call and one index search).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Request:
    key: Hashable
    texts: list[str]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    gap: float = float("inf")  # seconds since the request before it arrived


def take_group(pending: list[_Request], max_batch: int) -> tuple[list[_Request], list[_Request]]:
    """(the requests to run together, the rest): the oldest request's key, in arrival order, while the
    queries fit in `max_batch` (the first request always goes, however many queries it has). Pure."""
    if not pending:
        return [], []
    key = pending[0].key
    group, rest, n = [], [], 0
    for r in pending:
        if r.key == key and (not group or n + len(r.texts) <= max_batch):
            group.append(r)
            n += len(r.texts)
        else:
            rest.append(r)
    return group, rest


class SearchBatcher:
    """See the module docstring. `run(key, texts) -> rows` (one row per text) runs in worker threads;
    `on_batch(n_requests, n_queries)` is told each batch's size (metrics)."""

    def __init__(self, run: Callable[[Hashable, list[str]], Sequence[Any]], *, window_s: float = 0.003,
                 max_batch: int = 8, workers: int = 1, on_batch: Callable[[int, int], None] | None = None):
        self.run, self.window_s, self.max_batch = run, window_s, max_batch
        self.on_batch = on_batch
        self.pending: list[_Request] = []
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="relm-search")
        self.n_workers = workers
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_arrival = float("-inf")
        self._last_group = 0
        self._tasks: list[asyncio.Task] = []

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # at the first request, on the loop serving it (a new loop: start again)
            self._loop, self._wake = loop, asyncio.Event()
            self.pending = []
            self._tasks = [loop.create_task(self._worker()) for _ in range(self.n_workers)]

    async def search(self, key: Hashable, texts: list[str]) -> list[Any]:
        """The rows for `texts` under `key`, computed with whatever else arrives meanwhile."""
        self._start()
        future = asyncio.get_running_loop().create_future()
        request = _Request(key, list(texts), future)
        request.gap, self._last_arrival = request.arrived - self._last_arrival, request.arrived
        self.pending.append(request)
        self._wake.set()
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self.pending = [r for r in self.pending if not r.future.done()]  # timed out or disconnected
            if not self.pending:
                self._wake.clear()
                continue
            wait = self.window_s - (time.perf_counter() - self.pending[0].arrived)
            if wait > 0 and self._others_coming() and sum(len(r.texts) for r in self.pending) < self.max_batch:
                await asyncio.sleep(wait)
            group, self.pending = take_group([r for r in self.pending if not r.future.done()], self.max_batch)
            if not self.pending:
                self._wake.clear()
            if not group:
                continue
            self._last_group = len(group)
            texts = [t for r in group for t in r.texts]
            if self.on_batch is not None:
                self.on_batch(len(group), len(texts))
            try:
                rows = await loop.run_in_executor(self.pool, self.run, group[0].key, texts)
            except Exception as e:  # the same key, the same failure: every request of the group gets it
                for r in group:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            start = 0
            for r in group:
                if not r.future.done():
                    r.future.set_result(list(rows[start:start + len(r.texts)]))
                start += len(r.texts)

    def _others_coming(self) -> bool:
        """Whether waiting for the window can gather anything: requests arrive closer together than the
        window, or the last batch carried several. A lone client (one request at a time) is not held."""
        return len(self.pending) > 1 or self.pending[0].gap < self.window_s or self._last_group > 1

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for r in self.pending:
            if not r.future.done():
                r.future.cancel()
        self.pending = []
        self._tasks, self._loop = [], None
        self.pool.shutdown(wait=False, cancel_futures=True)
