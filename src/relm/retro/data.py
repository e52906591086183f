"""Training and evaluation batches for RETRO: sequences of whole chunks with their neighbours.

A `ChunkStream` is an (n, m) array of token chunks in reading order (documents back to back), the
`NeighbourDB` built for exactly that stream (row u holds chunk u's k neighbours [N, F]), and optionally
the passage vectors of those neighbours (the ReLM fusion variant attends to vectors, not tokens).
A sequence is L consecutive chunks, T = L·m tokens; its targets are the tokens shifted by one, the
last one being the first token of the next chunk (or ignored at the end of the stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

IGNORE = -100


@dataclass
class ChunkStream:
    chunks: np.ndarray  # (n, m) int
    neighbours: object  # NeighbourDB (or anything with .batch(rows) -> (neighbours, mask) and .ids)
    vectors: np.ndarray | None = None  # (n_passages, E) datastore embeddings for the ReLM variant

    def __post_init__(self):
        if len(self.neighbours) != len(self.chunks):
            raise ConfigError(f"the neighbour database has {len(self.neighbours):,} rows, the stream "
                              f"{len(self.chunks):,} chunks; build the neighbours for this stream")
        if self.neighbours.chunk_size != self.chunks.shape[1]:
            raise ConfigError(f"neighbours were built for {self.neighbours.chunk_size}-token chunks, the stream "
                              f"has {self.chunks.shape[1]}")

    @property
    def chunk_size(self) -> int:
        return int(self.chunks.shape[1])

    def n_sequences(self, seq_chunks: int) -> int:
        return len(self.chunks) // seq_chunks

    def batch(self, starts: np.ndarray, seq_chunks: int) -> dict[str, np.ndarray]:
        """Sequences starting at chunk rows `starts`: tokens/targets (B, T), neighbours/mask (B, L, k, r),
        and when vectors are set, passage_vectors (B, L, k, E) and vector_mask (B, L, k)."""
        starts = np.asarray(starts, dtype=np.int64)
        if (starts < 0).any() or (starts + seq_chunks > len(self.chunks)).any():
            raise ConfigError(f"sequence starts must lie in [0, {len(self.chunks) - seq_chunks}]")
        rows = starts[:, None] + np.arange(seq_chunks)[None, :]  # (B, L)
        m = self.chunk_size
        tokens = np.asarray(self.chunks[rows.ravel()], dtype=np.int64).reshape(len(starts), seq_chunks * m)
        nxt = starts + seq_chunks
        last = np.full(len(starts), IGNORE, dtype=np.int64)
        ok = nxt < len(self.chunks)
        last[ok] = np.asarray(self.chunks[nxt[ok], 0], dtype=np.int64)
        targets = np.concatenate([tokens[:, 1:], last[:, None]], axis=1)
        nb, mask = self.neighbours.batch(rows.ravel())
        k, r = nb.shape[1], nb.shape[2]
        out = {"tokens": tokens, "targets": targets,
               "neighbours": nb.reshape(len(starts), seq_chunks, k, r),
               "neighbour_mask": mask.reshape(len(starts), seq_chunks, k, r)}
        if self.vectors is not None:
            ids = np.asarray(self.neighbours.ids[np.sort(rows.ravel())])  # memmap fancy index needs order
            order = np.argsort(np.argsort(rows.ravel()))
            ids = ids[order]
            vec = np.zeros((len(ids), k, self.vectors.shape[1]), dtype=np.float32)
            valid = ids >= 0
            vec[valid] = np.asarray(self.vectors[ids[valid]], dtype=np.float32)
            out["passage_vectors"] = vec.reshape(len(starts), seq_chunks, k, -1)
            out["vector_mask"] = valid.reshape(len(starts), seq_chunks, k)
        return out


def sequence_starts(n_chunks: int, seq_chunks: int, *, stride_chunks: int | None = None) -> np.ndarray:
    """Start rows of non-overlapping (or `stride_chunks`-strided) sequences of seq_chunks chunks."""
    stride = stride_chunks or seq_chunks
    if n_chunks < seq_chunks:
        raise ConfigError(f"the stream has {n_chunks} chunks, fewer than one sequence of {seq_chunks}")
    return np.arange(0, n_chunks - seq_chunks + 1, stride, dtype=np.int64)


def split_starts(starts: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of sequence starts into (train, held-out); held_out in [0, 1)."""
    if not 0 <= held_out < 1:
        raise ConfigError(f"held-out fraction must be in [0, 1), got {held_out}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(starts))
    n_ho = int(round(held_out * len(starts)))
    return np.sort(starts[perm[n_ho:]]), np.sort(starts[perm[:n_ho]])
