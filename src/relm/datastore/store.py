"""`Datastore`: a finished datastore directory, opened memory-mapped.

Opening reads only the manifest and maps the arrays; passage text, document
records and embeddings are read on demand, so opening a billion-passage
datastore costs the same as opening a tiny one.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import load_npy
from ..config import EncoderConfig
from ..corpus.documents import NO_TIMESTAMP, format_timestamp
from ..errors import ConfigError, DatastoreError
from ..retrieval.exact import exact_search
from ..retrieval.indexes import check_k
from . import layout as L

MAX_QUERY_CHARS = 100_000


@dataclass
class Hit:
    """One search result: the passage, its score and where it came from."""

    passage_id: int
    score: float
    text: str
    doc_index: int
    doc_id: str
    domain: str
    title: str | None
    timestamp: int | None
    source: str
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = format_timestamp(self.timestamp)
        return d


class Datastore:
    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self._encoder = None

    @classmethod
    def open(cls, path: str | Path) -> Datastore:
        from .update import recover, recover_swap

        root = Path(path)
        recover_swap(root)
        recover(root)  # finish an update that was interrupted mid-commit
        manifest = L.read_manifest(root)
        ds = cls(root, manifest)
        ds._check_files()
        return ds

    def _check_files(self) -> None:
        wanted = [L.PASSAGE_TEXT, L.PASSAGE_OFFSETS, L.PASSAGE_DOC, L.DOC_RECORDS, L.DOC_OFFSETS]
        wanted += [s["file"] for s in self.manifest["embeddings"]["shards"]]
        missing = [w for w in wanted if not (self.root / w).exists()]
        if missing:
            raise DatastoreError(f"{self.root}: damaged datastore, missing {', '.join(missing)}; rebuild it")

    # -- sizes and identity ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["counts"]["passages"])

    @property
    def n_documents(self) -> int:
        return int(self.manifest["counts"]["documents"])

    @property
    def dim(self) -> int:
        return int(self.manifest["embeddings"]["dim"])

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def generation(self) -> int:
        """Bumped by every update (add, delete, compact); indexes record the one they were built at."""
        return int(self.manifest.get("generation", 0))

    @property
    def revision(self) -> int:
        """Bumped by every update, deletions included (cache keys use it)."""
        return int(self.manifest.get("revision", 0))

    @property
    def domains(self) -> list[str]:
        return [d["name"] for d in self.manifest["domains"]]

    @cached_property
    def deleted_documents(self) -> np.ndarray:
        """Sorted uint32 indexes of tombstoned documents (`relm delete`)."""
        from .update import read_deleted

        return read_deleted(self.root)

    @cached_property
    def _live(self) -> np.ndarray | None:
        if len(self.deleted_documents) == 0:
            return None
        live_docs = np.ones(self.n_documents, dtype=bool)
        live_docs[self.deleted_documents] = False
        return live_docs[self.doc_index]

    def allowed(
        self,
        *,
        before: int | None = None,
        after: int | None = None,
        domains: Sequence[str] | None = None,
    ) -> np.ndarray | None:
        """Boolean (n_passages,) mask of what a search may return, or None when everything is allowed.

        Tombstoned documents are always excluded. `before`/`after` (epoch seconds) keep documents with a
        timestamp strictly before / at-or-after the bound (documents without a timestamp are excluded when
        a bound is given); `domains` keeps those domains.
        """
        if before is None and after is None and not domains:
            return self._live
        docs = np.ones(self.n_documents, dtype=bool)
        ts = np.asarray(self.doc_timestamp)
        if before is not None or after is not None:
            docs &= ts != NO_TIMESTAMP
            if before is not None:
                docs &= ts < before
            if after is not None:
                docs &= ts >= after
        if domains:
            unknown = sorted(set(domains) - set(self.domains))
            if unknown:
                raise ConfigError(f"unknown domain(s) {unknown}; this datastore has {self.domains}")
            codes = [self.domains.index(d) for d in domains]
            docs &= np.isin(self.doc_domain, codes)
        if len(self.deleted_documents):
            docs[self.deleted_documents] = False
        return docs[self.doc_index]

    # -- memory-mapped arrays -------------------------------------------------------------------
    @cached_property
    def _text(self) -> mmap.mmap | bytes:
        path = self.root / L.PASSAGE_TEXT
        if path.stat().st_size == 0:
            return b""
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    @cached_property
    def _offsets(self) -> np.ndarray:
        return load_npy(self.root / L.PASSAGE_OFFSETS)

    @cached_property
    def doc_index(self) -> np.ndarray:
        """(n_passages,) uint32: the document of each passage."""
        return load_npy(self.root / L.PASSAGE_DOC)

    @cached_property
    def doc_passages(self) -> np.ndarray:
        """(n_docs + 1,) uint64: document j owns passages [doc_passages[j], doc_passages[j+1])."""
        return load_npy(self.root / L.DOC_PASSAGES)

    @cached_property
    def doc_domain(self) -> np.ndarray:
        return load_npy(self.root / L.DOC_DOMAIN)

    @cached_property
    def doc_timestamp(self) -> np.ndarray:
        return load_npy(self.root / L.DOC_TIMESTAMP)

    @cached_property
    def _records(self) -> mmap.mmap:
        with open(self.root / L.DOC_RECORDS, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    @cached_property
    def _record_offsets(self) -> np.ndarray:
        return load_npy(self.root / L.DOC_OFFSETS)

    @cached_property
    def embedding_shards(self) -> list[tuple[int, np.ndarray]]:
        """[(first passage id, (rows, dim) float16 memmap)] in passage order."""
        return [(int(s["start"]), load_npy(self.root / s["file"])) for s in self.manifest["embeddings"]["shards"]]

    # -- passages, documents, tokens ------------------------------------------------------------
    def _check_ids(self, ids: np.ndarray) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))][0]
            raise IndexError(f"passage id {bad} out of range [0, {len(self)})")

    def passage(self, i: int) -> str:
        self._check_ids(np.asarray([i]))
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._text[a:b].decode("utf-8")

    def passages(self, ids: Sequence[int]) -> list[str]:
        return [self.passage(int(i)) for i in ids]

    def document(self, j: int) -> dict[str, Any]:
        """The record of document j: id, domain, title, timestamp, source, metadata."""
        if not 0 <= j < self.n_documents:
            raise IndexError(f"document index {j} out of range [0, {self.n_documents})")
        a, b = int(self._record_offsets[j]), int(self._record_offsets[j + 1])
        return json.loads(self._records[a:b])

    def document_passages(self, j: int) -> range:
        return range(int(self.doc_passages[j]), int(self.doc_passages[j + 1]))

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """float16 (len(ids), dim) rows for the given passage ids, read from the shards."""
        ids = np.asarray(ids, dtype=np.int64)
        self._check_ids(ids)
        out = np.empty((len(ids), self.dim), dtype=np.float16)
        starts = np.array([s for s, _ in self.embedding_shards] + [len(self)])
        which = np.searchsorted(starts, ids, side="right") - 1
        for w in np.unique(which):
            sel = which == w
            start, arr = self.embedding_shards[w]
            out[sel] = arr[ids[sel] - start]
        return out

    @cached_property
    def _tokens(self) -> tuple[np.ndarray, np.ndarray]:
        if self.manifest.get("tokens") is None:
            raise DatastoreError(
                f"{self.root} holds word passages, not token chunks; build it with --chunk-tokens M"
            )
        return load_npy(self.root / L.TOKEN_IDS), load_npy(self.root / L.TOKEN_OFFSETS)

    def chunk_tokens(self, i: int) -> np.ndarray:
        """Token ids of chunk i (token-mode datastores)."""
        ids, offsets = self._tokens
        self._check_ids(np.asarray([i]))
        return ids[int(offsets[i]) : int(offsets[i + 1])]

    def continuation(self, i: int) -> np.ndarray | None:
        """Token ids of the chunk after i in the same document, or None when i ends its document."""
        if i + 1 >= len(self) or self.doc_index[i + 1] != self.doc_index[i]:
            return None
        return self.chunk_tokens(i + 1)

    # -- search ---------------------------------------------------------------------------------
    def encoder(self, config: EncoderConfig | None = None):
        """The encoder that built this datastore (loaded once), checked against the manifest."""
        if self._encoder is None:
            from ..encoders import load_encoder

            recorded = self.manifest["encoder"]
            config = config or EncoderConfig(model=recorded["model"], normalize=recorded["normalize"])
            enc = load_encoder(config)
            ident = enc.identity()
            if ident["dim"] != self.dim:
                raise ConfigError(f"encoder {config.model!r} has dimension {ident['dim']}, datastore has {self.dim}")
            if ident["fingerprint"] != recorded["fingerprint"]:
                raise ConfigError(
                    f"encoder {config.model!r} (fingerprint {ident['fingerprint']}) is not the one that built "
                    f"{self.root} (fingerprint {recorded['fingerprint']}); queries would be embedded differently"
                )
            self._encoder = enc
        return self._encoder

    def encode_queries(self, queries: Sequence[str], batch_size: int = 64) -> np.ndarray:
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise ConfigError("empty query; give some text to search for")
            if len(q) > MAX_QUERY_CHARS:
                raise ConfigError(f"query of {len(q)} characters exceeds {MAX_QUERY_CHARS}; shorten it")
        return self.encoder().encode(
            list(queries), batch_size=batch_size, normalize=self.manifest["encoder"]["normalize"]
        )

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product for query vectors (nq, d): (scores, passage ids).

        `allowed` defaults to `self.allowed()` (everything but tombstoned documents).
        """
        check_k(k)
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"query vectors have dimension {vectors.shape[1]}, datastore has {self.dim}")
        return exact_search(vectors, self.embedding_shards, k, allowed=self.allowed() if allowed is None else allowed)

    def search(self, queries: str | Sequence[str], k: int = 10, batch_size: int = 64) -> list[list[Hit]]:
        """Exact dense search: for each query, its k best passages as `Hit`s, best first.

        For ANN, BM25, hybrid and sharded search, filters and thresholds, use `relm.retrieval.Retriever`.
        """
        check_k(k)
        if isinstance(queries, str):
            queries = [queries]
        scores, ids = self.search_vectors(self.encode_queries(queries, batch_size), k)
        return [self.hits(s, i) for s, i in zip(scores, ids, strict=True)]

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        """Materialise one query's (scores, ids) row into `Hit`s (skipping padding)."""
        out = []
        for s, i in zip(scores, ids, strict=True):
            if i < 0:
                continue
            j = int(self.doc_index[i])
            rec = self.document(j)
            ts = int(self.doc_timestamp[j])
            out.append(
                Hit(
                    passage_id=int(i),
                    score=float(s),
                    text=self.passage(int(i)),
                    doc_index=j,
                    doc_id=rec["id"],
                    domain=rec["domain"],
                    title=rec["title"],
                    timestamp=None if ts == NO_TIMESTAMP else ts,
                    source=rec["source"],
                    metadata=rec["metadata"],
                )
            )
        return out

    def info(self) -> dict[str, Any]:
        """A summary for `relm info`: counts, encoder, chunker, domains, disk use."""
        from ..artifacts import dir_size, read_json
        from ..retrieval.indexes import list_indexes

        m = self.manifest
        disk = dir_size(self.root)
        text = m["counts"]["text_bytes"]
        stats_path = self.root / L.STATS
        return {
            "path": str(self.root),
            "format_version": m["format_version"],
            "kind": m["kind"],
            "counts": m["counts"],
            "encoder": m["encoder"],
            "chunker": m["chunker"],
            "tokens": m["tokens"],
            "domains": m["domains"],
            "inputs": [{k: i[k] for k in ("path", "format", "bytes", "domain")} for i in m["inputs"]],
            "skipped": m["build"]["read"]["skipped"],
            "disk_bytes": disk,
            "bytes_per_passage_beyond_text": (disk - text) / max(len(self), 1),
            "stats": read_json(stats_path) if stats_path.exists() else None,
            "indexes": list_indexes(self),
            "generation": self.generation,
            "revision": self.revision,
            "deleted": m.get("deleted"),
        }

