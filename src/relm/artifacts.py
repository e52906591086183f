"""Atomic writes, hashing and memory-mapped arrays: the I/O every artifact shares.

Every write goes to `NAME.tmp` beside its target and is moved into place with
`os.replace`, which is atomic on POSIX: a reader (or a resumed build) sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

_HASH_BLOCK = 1 << 20  # 1 MiB reads


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dumps_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, fixed indent) so equal content is equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, dumps_json(obj).encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Open a `.npy` file memory-mapped (the default) without ever unpickling."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


class AtomicWriter:
    """A binary file written to `NAME.tmp` and renamed on `commit()`.

    Used as a context manager, it commits on success and deletes the temporary
    file on error, so a crash never leaves a half-written file under the real name.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp(self.path)
        self.file = open(self.tmp, "wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def concat_npy(paths: Iterable[Path], out: Path, dtype: np.dtype, block_rows: int = 1 << 20) -> int:
    """Concatenate 1-d `.npy` files into one without holding them all in memory.

    Returns the number of rows written.
    """
    paths = list(paths)
    sizes = [load_npy(p).shape[0] for p in paths]
    total = int(sum(sizes))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(out)
    dest = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total,))
    row = 0
    for p, n in zip(paths, sizes, strict=True):
        src = load_npy(p)
        for start in range(0, n, block_rows):
            block = src[start : start + block_rows]
            dest[row : row + len(block)] = block
            row += len(block)
    dest.flush()
    del dest
    os.replace(tmp, out)
    return total


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def directory_fingerprint(root: str | os.PathLike, full_limit: int = 1 << 20) -> str:
    """A cheap content fingerprint of a model directory.

    Small files (configs, tokenizers) are hashed whole; large ones (weights) by
    name, size and their first and last `full_limit` bytes, so a 14 GB encoder
    is fingerprinted in milliseconds yet any re-saved or swapped weight file
    changes the result.
    """
    root = Path(root)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    for p in files:
        rel = p.relative_to(root).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= 2 * full_limit:
                h.update(f.read())
            else:
                h.update(f.read(full_limit))
                f.seek(size - full_limit)
                h.update(f.read(full_limit))
    return h.hexdigest()[:16]


def dir_size(root: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
