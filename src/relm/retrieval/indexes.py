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

import re
import shutil
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


def index_dir(ds, name: str) -> Path:
    return Path(ds.root) / INDEXES_DIR / check_name(name)


def datastore_state(ds) -> dict[str, Any]:
    """The datastore facts an index depends on."""
    return {
        "passages": len(ds),
        "generation": ds.generation,
        "encoder_fingerprint": ds.manifest["encoder"]["fingerprint"],
        "dim": ds.dim,
    }


def list_indexes(ds) -> list[dict[str, Any]]:
    root = Path(ds.root) / INDEXES_DIR
    if not root.exists():
        return []
    return [read_json(p / CONFIG) for p in sorted(root.iterdir()) if (p / CONFIG).exists()]


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
    config = read_json(path / CONFIG)
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
    if built["passages"] != now["passages"] or built["generation"] != now["generation"]:
        raise DatastoreError(
            f"index {name!r} is older than the datastore (built at {built['passages']:,} passages, "
            f"generation {built['generation']}; now {now['passages']:,}, generation {now['generation']}); "
            f"rebuild it with `relm index {ds.root} --name {name} --overwrite`"
        )


def prepare_index_dir(ds, name: str, overwrite: bool) -> Path:
    path = index_dir(ds, name)
    if path.exists():
        if (path / CONFIG).exists() and not overwrite:
            raise DatastoreError(f"index {name!r} exists in {ds.root}; pass --overwrite to rebuild it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k <= 0:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return int(k)
