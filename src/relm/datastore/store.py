"""`Datastore`: a finished datastore directory, opened memory-mapped.

Opening reads only the manifest and maps the arrays; passage text, document
records and embeddings are read on demand, so opening a billion-passage
datastore costs the same as opening a tiny one.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ENCODER_BACKENDS, EncoderConfig, check_backend
from ..corpus.documents import NO_TIMESTAMP, format_timestamp
from ..errors import ConfigError, DatastoreError
from ..retrieval.exact import exact_search
from ..retrieval.indexes import check_k
from ..retrieval.options import check_queries
from . import layout as L


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


def _read_manifest_bytes(root: Path) -> bytes | None:
    try:
        return (root / L.MANIFEST).read_bytes()
    except OSError:
        return None


def _loadable(backend: str) -> str:
    """A recorded backend `load_encoder` can run (another, e.g. a test encoder's, is refused by the checks)."""
    return backend if backend in ENCODER_BACKENDS else "torch"


class Datastore:
    """A finished datastore, opened read-only and memory-mapped.

    Opening never writes. Every file is opened (mapped) at open time, so a reader keeps seeing the
    revision it opened, whole, even while a writer commits a newer one (`os.replace` keeps the old
    files alive for the mappings that hold them); `reopen_if_changed()` moves to the newest.
    Writers build a *view* of the state they are about to commit (`Datastore.view`, staged files in
    place of live ones) to update indexes against it before anything is committed.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], *, files: dict[str, Path] | None = None,
                 index_root: Path | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self._files = dict(files or {})
        self.index_root = Path(index_root) if index_root is not None else self.root / "indexes"
        self._encoder = None
        # queries are embedded by the backend that built the datastore unless told otherwise (`open`)
        self.query_backend: str | None = None
        self.allow_backend_mismatch = False

    def path(self, rel: str) -> Path:
        """Where file `rel` of this datastore state lives (a staged file in a writer's view)."""
        return self._files.get(rel, self.root / rel)

    @classmethod
    def open(cls, path: str | Path, *, wait_seconds: float = 30.0, query_backend: str | None = None,
             allow_backend_mismatch: bool = False) -> Datastore:
        """Open the datastore at `path` read-only. While a writer is applying a commit (a matter of
        renames) this waits up to `wait_seconds`; an interrupted commit is refused with the command that
        finishes it (opening never writes). `query_backend` embeds queries with another encoder backend
        than the one that built it (checked when the encoder loads: `encoders.compat`)."""
        ds = cls._open(path, wait_seconds)
        if query_backend is not None:
            ds.query_backend = check_backend(query_backend)
        ds.allow_backend_mismatch = bool(allow_backend_mismatch)
        return ds

    @classmethod
    def _open(cls, path: str | Path, wait_seconds: float) -> Datastore:
        from . import journal
        from .lock import writer_active

        root = Path(path)
        deadline = time.monotonic() + wait_seconds
        while True:
            while journal.pending(root):
                if not writer_active(root):
                    raise DatastoreError(
                        f"{root}: an update was interrupted before it finished; run `relm recover {root}` "
                        "(or any command that writes to it) to finish it"
                    )
                if time.monotonic() > deadline:
                    raise DatastoreError(f"{root}: a writer is still committing an update; try again shortly")
                time.sleep(0.02)
            raw = _read_manifest_bytes(root)
            ds = cls(root, L.read_manifest(root))
            ds._open_files()
            if not journal.pending(root) and _read_manifest_bytes(root) == raw:
                return ds  # no commit started while the files were being mapped: one consistent revision
            if time.monotonic() > deadline:
                raise DatastoreError(f"{root}: the datastore keeps changing while it is opened; try again")

    @classmethod
    def view(cls, root: Path, manifest: dict[str, Any], *, files: dict[str, Path] | None = None,
             index_root: Path | None = None) -> Datastore:
        """A writer's view of a state it is about to commit: `files` maps datastore paths to staged files."""
        L.check_manifest(manifest, Path(root) / L.MANIFEST)
        ds = cls(root, manifest, files=files, index_root=index_root)
        ds._open_files()
        return ds

    def with_index_root(self, index_root: Path) -> Datastore:
        """The same datastore state whose indexes are read and written under `index_root` (staging)."""
        other = copy.copy(self)
        other.index_root = Path(index_root)
        return other

    def changed(self) -> bool:
        """True when the datastore on disk is at another revision than this reader (or being updated)."""
        from . import journal

        try:
            m = L.read_manifest(self.root)
        except DatastoreError:
            return True
        return journal.pending(self.root) or m.get("revision", 0) != self.revision or \
            m.get("generation", 0) != self.generation

    def reopen_if_changed(self) -> Datastore:
        """This reader, or a new one at the newest revision when the datastore was updated since. The new
        one keeps the loaded encoder when the manifest records the same one (loading costs seconds; its
        fingerprint was checked when it was first loaded)."""
        if not self.changed():
            return self
        new = Datastore.open(self.root, query_backend=self.query_backend,
                             allow_backend_mismatch=self.allow_backend_mismatch)
        if self._encoder is not None and self.manifest["encoder"] == new.manifest["encoder"]:
            new._encoder = self._encoder
        return new

    def _open_files(self) -> None:
        """Map every file and check its size and header against the manifest (cheap: no contents read)."""
        from .integrity import open_files

        for name, value in open_files(self).items():
            setattr(self, name, value)

    # -- sizes and identity ---------------------------------------------------------------------
    @cached_property
    def meta(self):
        """The typed manifest (`relm.datastore.manifest.Manifest`); `self.manifest` is its JSON."""
        from .manifest import Manifest

        return Manifest.from_json(self.manifest, str(self.root / L.MANIFEST))

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
                raise ConfigError(f"unknown domain(s) {unknown}; this datastore has {self.domains}"
                                  f"{self._domain_hint()}")
            codes = [self.domains.index(d) for d in domains]
            docs &= np.isin(self.doc_domain, codes)
        if len(self.deleted_documents):
            docs[self.deleted_documents] = False
        return docs[self.doc_index]

    def _domain_hint(self) -> str:
        """Why the domains may not be what a filter expects: every one is an input file's default label, so
        no document had the domain field (the usual cause of an unknown domain)."""
        reader = self.manifest.get("build", {}).get("plan", {}).get("config", {}).get("reader", {})
        labels = {i.get("domain") for i in self.manifest.get("inputs", [])}
        if reader.get("domains") or not set(self.domains) <= labels:
            return ""
        field = reader.get("domain_field", "domain")
        return (f" (its input files' default labels: the documents seem to have no {field!r} field; rebuild with "
                "--domain-field FIELD naming the documents' domain field, or --domain D per input)")

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

    @property
    def prepends_title(self) -> bool:
        """True when passages were embedded (and are BM25-indexed) with their document's title prepended."""
        return bool((self.manifest.get("chunker") or {}).get("prepend_title", False))

    def passage_input_texts(self, ids: Sequence[int]) -> list[str]:
        """What the encoder embedded for passages `ids` (and what BM25 indexes): the stored text, with
        the document's title prepended (`corpus.documents.with_title`) when the datastore records that.
        The one place that re-derives encoder input from the store (BM25 builds and updates use it)."""
        texts = self.passages(ids)
        if not self.prepends_title:
            return texts
        from ..corpus.documents import with_title

        titles: dict[int, str | None] = {}
        out = []
        for i, text in zip(ids, texts, strict=True):
            j = int(self.doc_index[int(i)])
            if j not in titles:
                titles[j] = self.document(j)["title"]
            out.append(with_title(titles[j], text))
        return out

    def passage_input_text(self, i: int) -> str:
        return self.passage_input_texts([i])[0]

    def document(self, j: int) -> dict[str, Any]:
        """The record of document j: id, domain, title, timestamp, source, metadata."""
        if not 0 <= j < self.n_documents:
            raise IndexError(f"document index {j} out of range [0, {self.n_documents})")
        return json.loads(self.record_bytes(j))

    # -- raw arrays and bytes (what writers copy: update, compact, assemble) --------------------------
    @property
    def passage_offsets(self) -> np.ndarray:
        """(n + 1,) uint64: passage i is bytes [passage_offsets[i], passage_offsets[i+1]) of the text."""
        return self._offsets

    @property
    def record_offsets(self) -> np.ndarray:
        """(n_docs + 1,) uint64 byte offsets of the document records (JSON lines)."""
        return self._record_offsets

    def text_bytes(self, first: int, stop: int) -> bytes:
        """The UTF-8 text of passages [first, stop), back to back."""
        return bytes(self._text[int(self._offsets[first]) : int(self._offsets[stop])])

    def record_bytes(self, j: int) -> bytes:
        """Document j's record as stored: one JSON line."""
        return bytes(self._records[int(self._record_offsets[j]) : int(self._record_offsets[j + 1])])

    @property
    def token_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Token mode: (ids, (n + 1,) uint64 offsets); chunk i is ids[offsets[i]:offsets[i+1]]."""
        return self._tokens

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

    @property
    def _tokens(self) -> tuple[np.ndarray, np.ndarray]:
        if self.manifest.get("tokens") is None:
            raise DatastoreError(
                f"{self.root} holds word passages, not token chunks; build it with --chunk-tokens M"
            )
        return self._token_arrays

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
            from ..encoders.compat import check_backend_compatible, recorded_backend

            recorded = self.manifest["encoder"]
            config = config or EncoderConfig(model=recorded["model"], normalize=recorded["normalize"],
                                             backend=self.query_backend or _loadable(recorded_backend(recorded)))
            enc = load_encoder(config)
            ident = enc.identity()
            if ident["dim"] != self.dim:
                raise ConfigError(f"encoder {config.model!r} has dimension {ident['dim']}, datastore has {self.dim}")
            if ident["fingerprint"] != recorded["fingerprint"]:
                raise ConfigError(
                    f"encoder {config.model!r} (fingerprint {ident['fingerprint']}) is not the one that built "
                    f"{self.root} (fingerprint {recorded['fingerprint']}); queries would be embedded differently"
                )
            check_backend_compatible(recorded, enc, where=str(self.root), allow_mismatch=self.allow_backend_mismatch)
            self._encoder = enc
        return self._encoder

    def encode_queries(self, queries: str | Sequence[str], batch_size: int = 64, truncate: str = "right") -> np.ndarray:
        """Query texts embedded with this datastore's encoder: float32 (nq, dim). A query longer than the
        encoder reads keeps its start (`truncate="right"`) or its end ("left")."""
        # "right" is every encoder's own behaviour: not passed, so encoders without the option still work
        extra = {} if truncate == "right" else {"truncate": truncate}
        return self.encoder().encode(
            check_queries(queries), batch_size=batch_size, normalize=self.manifest["encoder"]["normalize"], **extra
        )

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product for query vectors (nq, d): (scores, passage ids).

        `allowed` defaults to `self.allowed()` (everything but tombstoned documents). This is the exact
        primitive; to search text, with filters, a cache or another index, use `relm.retrieval.Retriever`.
        """
        check_k(k)
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"query vectors have dimension {vectors.shape[1]}, datastore has {self.dim}")
        return exact_search(vectors, self.embedding_shards, k, allowed=self.allowed() if allowed is None else allowed)

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
            "encoder_input": encoder_input_counts(m),
        }



def encoder_input_counts(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Passages embedded and how many of them the encoder cut, over the build and every add since
    (as encoded: a compaction does not recount). None when the build did not count (an older relm, or
    an encoder without a tokenizer)."""
    counted = (manifest.get("build") or {}).get("encoder_input")
    if counted is None:
        return None
    out = dict(counted)
    for op in manifest.get("updates") or []:
        if op.get("op") == "add":
            if op.get("encoder_input") is None:
                return None
            out["passages"] += op["encoder_input"]["passages"]
            out["truncated"] += op["encoder_input"]["truncated"]
    return out
