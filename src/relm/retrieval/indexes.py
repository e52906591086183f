"""What every index under `DS/indexes/NAME/` shares: its directory, its config.json, and freshness.

An index records which datastore state it was built from (passage count,
generation, encoder fingerprint, dimension). Opening an index whose datastore
has since changed (passages added without updating the index), or that was built
for another encoder or dimension, is refused with a message saying what to run.

Search functions everywhere return `(scores, ids)`: float32 (nq, k) and int64
(nq, k), best first, padded with (-inf, -1); an optional boolean `allowed` mask
over passage ids (deleted passages and time filters are False) restricts what
may be returned.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import read_json, write_json_atomic
from ..errors import ConfigError, DatastoreError

INDEXES_DIR = "indexes"
CONFIG = "config.json"
INDEX_FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SearchResult = tuple[np.ndarray, np.ndarray]


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ConfigError(f"index name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    return name


def _index_root(ds) -> Path:
    return Path(getattr(ds, "index_root", Path(ds.root) / INDEXES_DIR))


def index_dir(ds, name: str) -> Path:
    """Where index NAME of `ds` is read and written: DS/indexes/NAME, or its staged copy in a writer's view."""
    return _index_root(ds) / check_name(name)


def live_index_dir(ds, name: str) -> Path:
    return Path(ds.root) / INDEXES_DIR / check_name(name)


def is_staged(ds) -> bool:
    """True for a writer's view whose indexes are written to staging (inside an index transaction)."""
    return _index_root(ds) != Path(ds.root) / INDEXES_DIR


@contextlib.contextmanager
def index_transaction(ds, *, wait: bool = False) -> Iterator[Any]:
    """Build, rebuild, tune or update indexes beside the live ones and swap them in with one journaled
    commit (`relm.datastore.journal`). Yields a view of `ds` whose indexes live in staging; every index
    directory staged there replaces the live one whole. Until the commit the old indexes keep serving;
    killed before it, nothing changed. Nested inside another transaction (or an add/compact commit,
    whose view is already staged) it yields `ds` itself and the outer commit takes the changes."""
    from ..datastore import journal
    from ..datastore.lock import writer_lock

    if is_staged(ds):
        yield ds
        return
    root = Path(ds.root)
    with writer_lock(root, wait=wait):
        journal.recover(root)
        if ds.changed():
            raise DatastoreError(f"{root} was updated by another command since it was opened; run this again")
        stage = journal.stage_dir(root) / INDEXES_DIR
        try:
            yield ds.with_index_root(stage)
        except BaseException:
            journal.discard_stage(root)  # nothing was committed: the live indexes are untouched
            raise
        journal.commit_stage(root)


def stage_copy(ds, view, name: str) -> Path:
    """Copy live index NAME into the view's staging, to be updated there (a rename swaps it in)."""
    src, dst = live_index_dir(ds, name), index_dir(view, name)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def datastore_state(ds) -> dict[str, Any]:
    """The datastore facts an index depends on."""
    return {
        "passages": len(ds),
        "generation": ds.generation,
        "encoder_fingerprint": ds.manifest["encoder"]["fingerprint"],
        "dim": ds.dim,
    }


def list_indexes(ds) -> list[dict[str, Any]]:
    """The configs of the live indexes of `ds` (a directory without config.json is not an index)."""
    root = Path(ds.root) / INDEXES_DIR
    if not root.exists():
        return []
    return [_read_config(p / CONFIG) for p in sorted(root.iterdir()) if (p / CONFIG).exists()]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = read_json(path)
    except ValueError as e:
        raise DatastoreError(f"{path}: unreadable index config ({e}); rebuild the index") from e
    if not isinstance(config, dict) or not isinstance(config.get("datastore"), dict):
        raise DatastoreError(f"{path}: not an index config; rebuild the index")
    return config


def write_index_config(path: Path, config: dict[str, Any]) -> None:
    """Write config.json last: an index directory without one is an unfinished build."""
    write_json_atomic(path / CONFIG, {"format_version": INDEX_FORMAT_VERSION, **config})


def read_index_config(ds, name: str, *, check_fresh: bool = True, kind: str | None = None) -> dict[str, Any]:
    path = index_dir(ds, name)
    if not (path / CONFIG).exists():
        have = ", ".join(c["name"] for c in list_indexes(ds)) or "none"
        raise DatastoreError(
            f"{ds.root}: no index named {name!r} (have: {have}); build it with `relm index {ds.root} --name {name}`"
        )
    config = _read_config(path / CONFIG)
    if config.get("format_version") != INDEX_FORMAT_VERSION:
        raise DatastoreError(f"{path}: index format version {config.get('format_version')!r} is not supported")
    if kind is not None and config.get("type") != kind:
        raise ConfigError(f"index {name!r} is a {config.get('type')} index, not {kind}")
    if check_fresh:
        check_fresh_state(ds, config, name)
    return config


def check_fresh_state(ds, config: dict[str, Any], name: str) -> None:
    built = config["datastore"]
    now = datastore_state(ds)
    if built.get("encoder_fingerprint") is not None and built["encoder_fingerprint"] != now["encoder_fingerprint"]:
        raise DatastoreError(f"index {name!r} was built for another encoder; rebuild it with --overwrite")
    if built.get("dim") is not None and built["dim"] != now["dim"]:
        raise DatastoreError(f"index {name!r} has dimension {built['dim']}, the datastore {now['dim']}; rebuild it")
    if built["generation"] > now["generation"]:
        raise DatastoreError(
            f"index {name!r} is newer than this reader of {ds.root} (generation {built['generation']} vs "
            f"{now['generation']}): the datastore was updated since it was opened; open it again "
            "(Datastore.reopen_if_changed())"
        )
    if built["passages"] != now["passages"] or built["generation"] != now["generation"]:
        raise DatastoreError(
            f"index {name!r} is older than the datastore (built at {built['passages']:,} passages, "
            f"generation {built['generation']}; now {now['passages']:,}, generation {now['generation']}); "
            f"bring it up to date with `relm index {ds.root} --refresh`"
        )


def prepare_index_dir(ds, name: str, overwrite: bool) -> Path:
    """An empty directory for index NAME (in staging inside a transaction): an existing live index is
    kept unless `overwrite`; a directory without config.json is an unfinished build and is replaced."""
    if (live_index_dir(ds, name) / CONFIG).exists() and not overwrite:
        raise DatastoreError(f"index {name!r} exists in {ds.root}; pass --overwrite to rebuild it")
    path = index_dir(ds, name)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_faiss_index(index, path: Path) -> None:
    """faiss.write_index to NAME.tmp, fsync, then os.replace: readers never see half a file."""
    import os

    import faiss

    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def probe_ids(n: int) -> np.ndarray:
    """16 evenly spaced passage ids among the first n: what an index's probe fingerprints."""
    return np.unique(np.linspace(0, n - 1, num=min(16, n)).astype(np.int64)) if n else np.zeros(0, np.int64)


def check_probe(ds, config: dict[str, Any], name: str, probe: str) -> None:
    """Refuse an index whose recorded probe does not match this datastore's data (e.g. copied from another)."""
    if config.get("probe") is not None and config["probe"] != probe:
        raise DatastoreError(
            f"index {name!r} in {ds.root} was not built from this datastore's passages (its probe does not "
            f"match: copied from another datastore?); rebuild it with `relm index {ds.root} --name {name} "
            "--overwrite`"
        )


def check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k <= 0:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return int(k)
