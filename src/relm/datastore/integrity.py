"""Opening a datastore's files and checking them against its manifest, cheaply.

Every file is mapped and its size or `.npy` header (dtype, shape) checked against the counts the
manifest records; only a handful of values are read (the last offsets). A truncated text file, a
shard missing from the manifest, a short offsets array, tampered counts, a wrong-dimension shard or
a pickled `.npy` is refused on open with one line naming the file, instead of giving wrong results
later. Contents are not hashed: that would cost a read of the whole datastore.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import load_npy
from ..errors import DatastoreError
from . import layout as L

DELETED = "deleted.npy"


def _damaged(ds, what: str) -> DatastoreError:
    return DatastoreError(f"{what}; the datastore {ds.root} is damaged: rebuild it (or restore it from a copy)")


def _array(ds, rel: str, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> np.ndarray:
    path = ds.path(rel)
    if not path.exists():
        raise _damaged(ds, f"{path}: missing")
    try:
        a = load_npy(path)
    except (ValueError, OSError, EOFError) as e:
        raise _damaged(ds, f"{path}: unreadable array ({e})") from e
    if a.dtype.name not in dtypes:
        raise _damaged(ds, f"{path}: dtype {a.dtype} where {' or '.join(dtypes)} is expected")
    if tuple(a.shape) != shape:
        raise _damaged(ds, f"{path}: shape {tuple(a.shape)} where the manifest implies {shape}")
    return a


def _bytes_file(ds, rel: str, at_least: int):
    path = ds.path(rel)
    if not path.exists():
        raise _damaged(ds, f"{path}: missing")
    size = path.stat().st_size
    if size < at_least:
        raise _damaged(ds, f"{path}: {size:,} bytes where the manifest records {at_least:,}")
    if size == 0:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _count(ds, m: dict[str, Any], *keys: str) -> int:
    value: Any = m
    for k in keys:
        value = value.get(k) if isinstance(value, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _damaged(ds, f"{ds.root / L.MANIFEST}: {'.'.join(keys)} is {value!r}, not a count")
    return value


def open_files(ds) -> dict[str, Any]:
    """Map every file of `ds` (a Datastore) and check it; returns the attributes to set on it."""
    m = ds.manifest
    n = _count(ds, m, "counts", "passages")
    n_docs = _count(ds, m, "counts", "documents")
    text_bytes = _count(ds, m, "counts", "text_bytes")
    dim = _count(ds, m, "embeddings", "dim")
    out: dict[str, Any] = {}
    out["_offsets"] = off = _array(ds, L.PASSAGE_OFFSETS, (n + 1,), ("uint64",))
    if int(off[-1]) != text_bytes or (n and int(off[0]) != 0):
        raise _damaged(ds, f"{ds.path(L.PASSAGE_OFFSETS)}: passage text ends at byte {int(off[-1]):,}, "
                           f"the manifest records {text_bytes:,}")
    out["_text"] = _bytes_file(ds, L.PASSAGE_TEXT, text_bytes)
    out["doc_index"] = _array(ds, L.PASSAGE_DOC, (n,), ("uint32",))
    out["doc_passages"] = dp = _array(ds, L.DOC_PASSAGES, (n_docs + 1,), ("uint64",))
    if int(dp[-1]) != n:
        raise _damaged(ds, f"{ds.path(L.DOC_PASSAGES)}: documents own {int(dp[-1]):,} passages, the manifest "
                           f"records {n:,}")
    out["_record_offsets"] = ro = _array(ds, L.DOC_OFFSETS, (n_docs + 1,), ("uint64",))
    out["_records"] = _bytes_file(ds, L.DOC_RECORDS, int(ro[-1]))
    out["doc_domain"] = _array(ds, L.DOC_DOMAIN, (n_docs,), ("uint16",))
    out["doc_timestamp"] = _array(ds, L.DOC_TIMESTAMP, (n_docs,), ("int64",))
    out["embedding_shards"] = NoVectors(ds.root) if m.get(L.DEFERRED) else _shards(ds, m, n, dim)
    if m.get("tokens"):
        count = _count(ds, m, "tokens", "count")
        ids = _array(ds, L.TOKEN_IDS, (count,), ("uint16", "uint32"))
        tok_off = _array(ds, L.TOKEN_OFFSETS, (n + 1,), ("uint64",))
        if int(tok_off[-1]) != count:
            raise _damaged(ds, f"{ds.path(L.TOKEN_OFFSETS)}: chunks end at token {int(tok_off[-1]):,}, the "
                               f"manifest records {count:,}")
        out["_token_arrays"] = (ids, tok_off)
    out["deleted_documents"] = _deleted(ds, n_docs)
    return out


class NoVectors:
    """The embedding shards of a datastore whose vectors are deferred (`layout.DEFERRED`): any use is refused."""

    def __init__(self, root: Path):
        self.root = root

    def _refuse(self, *_):
        raise DatastoreError(f"{self.root} holds passages without vectors (a part of a build in progress, "
                             "encoded after the parts are assembled); open the finished datastore instead")

    __iter__ = __len__ = __getitem__ = _refuse


def _shards(ds, m: dict[str, Any], n: int, dim: int) -> list[tuple[int, np.ndarray]]:
    shards = m["embeddings"].get("shards") if isinstance(m.get("embeddings"), dict) else None
    if not isinstance(shards, list):
        raise _damaged(ds, f"{ds.root / L.MANIFEST}: embeddings.shards is not a list")
    out, start = [], 0
    for i, s in enumerate(shards):
        if not isinstance(s, dict) or not isinstance(s.get("file"), str) or s.get("start") != start \
                or not isinstance(s.get("rows"), int) or s["rows"] < 0:
            raise _damaged(ds, f"{ds.root / L.MANIFEST}: embedding shard {i} ({s!r}) does not continue at "
                               f"passage {start:,}")
        if Path(s["file"]).is_absolute() or ".." in Path(s["file"]).parts:
            raise _damaged(ds, f"{ds.root / L.MANIFEST}: embedding shard {i} names {s['file']!r}, outside")
        out.append((start, _array(ds, s["file"], (s["rows"], dim), ("float16",))))
        start += s["rows"]
    if start != n:
        raise _damaged(ds, f"{ds.root / L.MANIFEST}: embedding shards hold {start:,} vectors for {n:,} passages")
    return out


def _deleted(ds, n_docs: int) -> np.ndarray:
    path = ds.path(DELETED)
    if not path.exists():
        return np.zeros(0, dtype=np.uint32)
    try:
        a = load_npy(path, mmap=False)
    except (ValueError, OSError, EOFError) as e:
        raise _damaged(ds, f"{path}: unreadable tombstones ({e})") from e
    if a.ndim != 1 or a.dtype != np.uint32 or (len(a) and (int(a.max()) >= n_docs or np.any(np.diff(a) <= 0))):
        raise _damaged(ds, f"{path}: tombstones are not sorted document indexes below {n_docs:,}")
    return a
