"""Seeded synthetic vector datastores, for testing and benchmarking indexes against brute force.

`clustered_vectors` draws unit vectors around random centres (like sentence
embeddings, which cluster by topic), in blocks so a million never sit in memory
at once; `write_vector_datastore` writes them as a real, minimal datastore
directory (one placeholder passage per vector, one document) that
`Datastore.open` accepts, so indexes are built and opened exactly as on a
corpus. In the spirit of faiss `contrib.datasets.SyntheticDataset`. `hash_vectors` is a deterministic
stand-in for an encoder (a seeded Gaussian vector per distinct text), for tests and benchmarks that need
real datastores without loading a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..artifacts import AtomicWriter, save_npy_atomic, write_json_atomic
from ..datastore import layout as L
from ..datastore.manifest import Counts, EmbeddingShard, Manifest


def clustered_vectors(
    n: int,
    d: int,
    *,
    n_clusters: int = 256,
    noise: float = 0.6,
    latent_dim: int | None = None,
    seed: int = 0,
    stream: int = 1,
    block_rows: int = 65_536,
) -> Iterator[np.ndarray]:
    """float16 (rows, d) blocks of n unit vectors around n_clusters random centres.

    latent_dim None: x = normalize(c + noise·g / sqrt(d)), c a unit centre, g ~ N(0, I_d): isotropic
        clusters whose members are all nearly equidistant (the hard case for PQ).
    latent_dim r: z = c + noise·g_r in r dimensions (c, g_r ~ N(0, I_r)), x = normalize(z·W + 0.3·|z|·g_d
        / sqrt(d)) with W an orthonormal (r, d) map: low intrinsic dimension, like sentence embeddings.

    The centres (and W) depend only on `seed`, block b only on (seed, stream, b): another `stream`
    draws held-out queries from the same clusters.
    """
    r0 = np.random.default_rng([seed, 0])
    latent = latent_dim or d
    centres = r0.standard_normal((n_clusters, latent)).astype(np.float32)
    if latent_dim is None:
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    else:
        W = np.linalg.qr(r0.standard_normal((d, latent)))[0].T.astype(np.float32)  # (r, d), orthonormal rows
    for b, b0 in enumerate(range(0, n, block_rows)):
        rng = np.random.default_rng([seed, stream, b])
        rows = min(block_rows, n - b0)
        which = rng.integers(0, n_clusters, size=rows)
        if latent_dim is None:
            x = centres[which] + noise / np.sqrt(d) * rng.standard_normal((rows, d), dtype=np.float32)
        else:
            z = centres[which] + noise * rng.standard_normal((rows, latent), dtype=np.float32)  # (rows, r)
            iso = 0.3 * np.linalg.norm(z, axis=1, keepdims=True) / np.sqrt(d)
            x = z @ W + iso * rng.standard_normal((rows, d), dtype=np.float32)  # (rows, d)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x.astype(np.float16)


def write_vector_datastore(
    root: str | Path,
    blocks: Iterable[np.ndarray],
    dim: int,
    *,
    shard_rows: int = 65_536,
    generation: int = 0,
    fingerprint: str = "synthetic",
) -> Path:
    """Write vectors (float16 blocks) as a minimal datastore at `root` (overwriting its files, keeping
    `indexes/`). Shards hold `shard_rows` rows; the manifest is written last, as a build does."""
    root = Path(root)
    (root / L.EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
    for old in (root / L.EMBEDDINGS_DIR).glob("shard-*.npy"):
        old.unlink()
    shards, buf, n = [], [], 0

    def flush() -> None:
        if not buf:
            return
        rows = np.concatenate(buf)
        i = len(shards)
        save_npy_atomic(root / L.embedding_shard(i), rows)
        shards.append({"file": L.embedding_shard(i), "start": n - len(rows), "rows": len(rows)})
        buf.clear()

    pending = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float16)
        while len(block):
            take = min(shard_rows - pending, len(block))
            buf.append(block[:take])
            block, pending, n = block[take:], pending + take, n + take
            if pending == shard_rows:
                flush()
                pending = 0
    flush()
    # placeholder text: every passage is the empty string of the single document 0
    with AtomicWriter(root / L.PASSAGE_TEXT):
        pass
    save_npy_atomic(root / L.PASSAGE_OFFSETS, np.zeros(n + 1, dtype=np.uint64))
    save_npy_atomic(root / L.PASSAGE_DOC, np.zeros(n, dtype=np.uint32))
    record = b'{"domain":"synthetic","id":"synthetic","metadata":{},"source":"synthetic","timestamp":null,"title":null}\n'
    with AtomicWriter(root / L.DOC_RECORDS) as f:
        f.write(record)
    save_npy_atomic(root / L.DOC_OFFSETS, np.array([0, len(record)], dtype=np.uint64))
    save_npy_atomic(root / L.DOC_PASSAGES, np.array([0, n], dtype=np.uint64))
    save_npy_atomic(root / L.DOC_DOMAIN, np.zeros(1, dtype=np.uint16))
    save_npy_atomic(root / L.DOC_TIMESTAMP, np.full(1, np.iinfo(np.int64).min, dtype=np.int64))
    encoder = {"model": "synthetic", "dim": dim, "pooling": None, "fingerprint": fingerprint, "normalize": True}
    manifest = Manifest(
        kind="passages", encoder=encoder, chunker=None, tokens=None,
        counts=Counts(documents=1, passages=n, words=0, tokens=None, text_bytes=0, shards=len(shards)),
        dim=dim, shards=tuple(EmbeddingShard(**s) for s in shards),
        domains=({"name": "synthetic", "documents": 1},), inputs=(),
        build={"plan": None, "read": {"skipped": {}}}, generation=generation,
    )
    write_json_atomic(root / L.MANIFEST, manifest.to_json())
    return root


def hash_vectors(texts, dim: int, *, normalize: bool = True) -> np.ndarray:
    """(len(texts), dim) float32: one seeded Gaussian vector per distinct text (seed: blake2b of the text)."""
    import hashlib

    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
        out[i] = np.random.default_rng(seed).standard_normal(dim)
    if normalize:
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
