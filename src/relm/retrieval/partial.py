"""Partial results: a sharded search that left a failed shard out (`--on-shard-failure partial`) says so.

The shard fan-out reports each shard it left out (`report`); whoever asked for the search collects the
reports of the calls made in its block on this thread (`recording`): the result cache does not keep a
partial answer, and `relm serve` flags it in the response (`"partial": {"left_out": [...]}`). Blocks nest:
an inner block's reports reach the outer one too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def recording() -> Iterator[list[str]]:
    """The shards left out by searches made in this block on this thread (one line each)."""
    outer = getattr(_local, "reports", None)
    _local.reports = reports = []
    try:
        yield reports
    finally:
        _local.reports = outer
        if outer is not None:
            outer.extend(reports)


def report(what: str) -> None:
    """Called by a fan-out that returns without a shard: `what` names the shard and why."""
    reports = getattr(_local, "reports", None)
    if reports is not None:
        reports.append(what)
