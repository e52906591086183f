"""The writer lock: one process at a time writes a datastore.

Every command that writes (build, add, delete, compact, index, recover) holds an exclusive
`fcntl.flock` on `DS/.lock` for its whole run; readers take no lock. The lock file holds the
holder's pid and command while it is held, so a second writer is told who to wait for
(or waits itself with `wait=True`, the CLI's `--wait`). The kernel drops the lock when the holder
dies, however it dies, so a SIGKILLed writer never leaves a stale lock behind.

The lock is re-entrant within a process: `add` holds it while it builds, stages indexes and
commits, and the library calls it makes take it again at no cost.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import DatastoreError

log = logging.getLogger(__name__)

LOCK = ".lock"
_held: dict[str, list] = {}  # resolved root -> [fd, depth]: this process's locks (re-entrancy)


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    return f"pid {pid} ({command})" if pid else "another process"


def _command() -> str:
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:3] if sys.argv else ["python"]
    return " ".join(argv)[:200]


@contextlib.contextmanager
def writer_lock(root: str | os.PathLike, *, wait: bool = False, poll_seconds: float = 0.2) -> Iterator[None]:
    """Hold the exclusive writer lock of the datastore directory `root` (which must exist)."""
    root = Path(root)
    key = str(root.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    path = root / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DatastoreError(f"{root}: cannot take the writer lock ({e.strerror}); is the directory writable?") from e
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise DatastoreError(
                        f"{root} is being written by {_holder(path)}; wait for it to finish, "
                        "or pass --wait to queue behind it"
                    ) from None
                if not waited:
                    log.info("%s is being written by %s; waiting", root, _holder(path))
                    waited = True
                time.sleep(poll_seconds)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {_command()}\n".encode(), 0)
        _held[key] = [fd, 1]
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # an uninterrupted writer leaves an empty lock file behind
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def writer_active(root: str | os.PathLike) -> bool:
    """True when some process holds the writer lock of `root` (a read-only probe: creates nothing)."""
    root = Path(root)
    if str(root.resolve()) in _held:
        return True
    try:
        fd = os.open(root / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
