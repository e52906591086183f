"""The one write path of a finished datastore: stage, journal, apply; roll forward or roll back.

Every change to a finished datastore (add, delete, compact, an index built, rebuilt, refreshed or
removed) is made the same way, under the writer lock (`lock.writer_lock`):

1. everything new is written under `DS/.update/stage/`, at the path it will have in DS
   (`.update/stage/passages/offsets.npy` becomes `passages/offsets.npy`, a rebuilt index lands in
   `.update/stage/indexes/NAME/`); nothing that readers use is touched, except that `add` appends
   passage text and document records in place *beyond* the sizes the manifest records, which no
   reader reads;
2. `DS/.update/commit.json` is written (atomically): the moves, the deletions and the new manifest;
3. the moves are applied (`os.replace`, file by file), the deletions made, `manifest.json` written
   last, and `.update/` removed, `commit.json` last of all.

A process killed before step 2 leaves only staging: the next writer *rolls back* (truncates the
in-place appends to the manifest's sizes and removes the staging). Killed after step 2, the next
writer *rolls forward* (replays step 3: every move whose source is gone was already made, every
deletion is idempotent). Either way the datastore ends as if the command had not run, or had run
to the end. Opening a datastore never writes: recovery runs only in commands that write, under the
lock. Every path in a journal is checked to stay inside the datastore before anything is moved, so
a crafted `commit.json` cannot touch a file outside it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import load_npy, read_json, write_json_atomic
from ..errors import DatastoreError
from . import layout as L
from .lock import LOCK, writer_lock

log = logging.getLogger(__name__)

UPDATE_DIR = ".update"
STAGE = f"{UPDATE_DIR}/stage"
NEW = f"{UPDATE_DIR}/new"  # add: the new documents' own datastore (a resumable build)
JOURNAL = f"{UPDATE_DIR}/commit.json"


@dataclass
class Journal:
    """What a commit does: move staged files into place, delete what the new state no longer has,
    then write the new manifest (None: the manifest is unchanged, e.g. an index was rebuilt)."""

    moves: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"moves": [list(m) for m in self.moves], "deletes": list(self.deletes), "manifest": self.manifest}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Journal:
        bad = DatastoreError(f"{where}: not a relm update journal; move it away if you did not write it")
        if not isinstance(d, dict) or set(d) - {"moves", "deletes", "manifest"}:
            raise bad
        moves, deletes, manifest = d.get("moves", []), d.get("deletes", []), d.get("manifest")
        if not isinstance(moves, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m) for m in moves
        ):
            raise bad
        if not isinstance(deletes, list) or not all(isinstance(p, str) for p in deletes):
            raise bad
        if manifest is not None:
            L.check_manifest(manifest, where)
        return cls([(a, b) for a, b in moves], list(deletes), manifest)


# -- paths ----------------------------------------------------------------------------------------
def stage_dir(root: str | Path) -> Path:
    return Path(root) / STAGE


def inside(root: Path, rel: str, *, under: str | None = None, what: str = "path") -> Path:
    """root/rel, refused unless it stays inside root (and inside root/under), symlinks resolved."""
    base = root.resolve()
    if not rel or os.path.isabs(rel) or "\0" in rel:
        raise DatastoreError(f"{root / JOURNAL}: {what} {rel!r} is not a path inside the datastore; refusing")
    target = (root / rel).resolve()
    scope = (root / under).resolve() if under else base
    if target == base or not target.is_relative_to(scope):
        where = f"inside {root / under}" if under else f"inside {root}"
        raise DatastoreError(f"{root / JOURNAL}: {what} {rel!r} does not stay {where}; refusing the journal")
    if target.is_relative_to((root / UPDATE_DIR).resolve()) and not under:
        raise DatastoreError(f"{root / JOURNAL}: {what} {rel!r} points into {UPDATE_DIR}/; refusing the journal")
    if target == (root / LOCK).resolve():
        raise DatastoreError(f"{root / JOURNAL}: {what} {rel!r} is the lock file; refusing the journal")
    return root / rel


def staged_files(root: Path) -> list[str]:
    """Every file under the staging directory, as paths relative to it (sorted)."""
    stage = stage_dir(root)
    if not stage.exists():
        return []
    return sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() or p.is_symlink())


def journal_from_stage(
    root: Path, *, manifest: dict[str, Any] | None, deletes: list[str] = (), replace_dirs: list[str] = ()
) -> Journal:
    """Move every staged file into place; `replace_dirs` (e.g. indexes/NAME) lose the live files that
    the staged version does not have, so a rebuilt index replaces the old one whole."""
    files = staged_files(root)
    moves = [(f"{STAGE}/{rel}", rel) for rel in files]
    staged = set(files)
    gone = list(deletes)
    for d in replace_dirs:
        live = root / d
        if live.is_dir():
            gone += sorted(
                p.relative_to(root).as_posix() for p in live.rglob("*")
                if p.is_file() and p.relative_to(root).as_posix() not in staged
            )
    return Journal(moves, gone, manifest)


# -- commit and recovery ----------------------------------------------------------------------------
def commit(root: str | Path, journal: Journal) -> None:
    """Write the journal, then apply it. The caller holds the writer lock."""
    root = Path(root)
    _check(root, journal)
    write_json_atomic(root / JOURNAL, journal.to_dict())
    _apply(root, journal)


def commit_stage(root: str | Path, *, manifest: dict[str, Any] | None = None, deletes: list[str] = ()) -> None:
    """Commit everything staged: each staged index directory replaces its live one whole, every other
    staged file replaces its live file; then `deletes`, then `manifest`. The caller holds the lock."""
    root = Path(root)
    stage = stage_dir(root) / "indexes"
    names = sorted(p.name for p in stage.iterdir() if p.is_dir()) if stage.exists() else []
    commit(root, journal_from_stage(root, manifest=manifest, deletes=list(deletes),
                                    replace_dirs=[f"indexes/{n}" for n in names]))


def _check(root: Path, journal: Journal) -> None:
    for src, dst in journal.moves:
        inside(root, src, under=STAGE, what="source")
        inside(root, dst, what="destination")
    for rel in journal.deletes:
        inside(root, rel, what="deletion")


def _apply(root: Path, journal: Journal) -> None:
    for src, dst in journal.moves:
        if (root / src).exists():
            (root / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / src, root / dst)
    for rel in journal.deletes:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    _remove_empty_dirs(root / "indexes")
    if journal.manifest is not None:
        write_json_atomic(root / L.MANIFEST, journal.manifest)
    _clear_update_dir(root)


def _remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()


def _clear_update_dir(root: Path) -> None:
    """Remove `.update/`, the journal last: killed midway, the journal is still there to replay."""
    update = root / UPDATE_DIR
    if not update.exists():
        return
    for p in update.iterdir():
        if p.name == "commit.json":
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (update / "commit.json").unlink(missing_ok=True)
    update.rmdir()


def discard_stage(root: str | Path) -> None:
    """Remove what an uncommitted writer staged (it failed cleanly, before its commit)."""
    root = Path(root)
    stage = stage_dir(root)
    if stage.exists():
        shutil.rmtree(stage)
    update = root / UPDATE_DIR
    if update.exists() and not any(update.iterdir()):
        update.rmdir()


def pending(root: str | Path) -> bool:
    """True when a commit was journaled and not yet finished (being applied now, or interrupted)."""
    return (Path(root) / JOURNAL).exists()


def recover(root: str | Path, *, keep_new: bool = False) -> str | None:
    """Finish or undo whatever an interrupted writer left. Call under the writer lock.

    Returns "rolled forward", "rolled back" or None (nothing to do). `keep_new` keeps the staged build
    of an interrupted `add` (`.update/new/`) so that rerunning the add resumes it.
    """
    root = Path(root)
    with writer_lock(root):
        if pending(root):
            try:
                data = read_json(root / JOURNAL)
            except ValueError as e:
                raise DatastoreError(f"{root / JOURNAL}: unreadable update journal ({e})") from e
            journal = Journal.from_dict(data, str(root / JOURNAL))
            _check(root, journal)
            _apply(root, journal)
            log.info("%s: finished an interrupted update", root)
            return "rolled forward"
        if not (root / UPDATE_DIR).exists():
            return None
        _roll_back(root, keep_new=keep_new)
        log.info("%s: rolled back an interrupted update", root)
        return "rolled back"


def _roll_back(root: Path, *, keep_new: bool) -> None:
    manifest = L.read_manifest(root)
    _truncate(root / L.PASSAGE_TEXT, int(manifest["counts"]["text_bytes"]))
    offsets = root / L.DOC_OFFSETS
    if offsets.exists():
        _truncate(root / L.DOC_RECORDS, int(np.asarray(load_npy(offsets))[-1]))
    update = root / UPDATE_DIR
    for p in update.iterdir():
        if keep_new and p.name == "new":
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if not any(update.iterdir()):
        update.rmdir()


def _truncate(path: Path, size: int) -> None:
    """Drop an uncommitted tail appended beyond `size` bytes (a no-op when there is none)."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
