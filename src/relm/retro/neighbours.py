"""RETRO's neighbour database (Borgeaud et al. 2021, §2.3-2.4): the k nearest datastore chunks of every
m-token chunk of a training or evaluation token stream, each with its continuation.

Keys are the frozen encoder's embeddings of the datastore's chunks, i.e. the datastore's own embedding
shards (a token-mode datastore, `relm build --chunk-tokens 64`): the database is never re-encoded. A query
is the decoded text of one stream chunk, embedded with the same encoder. Neighbour j of chunk u is
RET(C_u)_j = [N, F]: the neighbour chunk N followed by its continuation F, the next chunk of the SAME
document, in r = 2m tokens (N in [0, m), F in [m, 2m); only a document's last chunk can be shorter than m,
and it has no continuation, so this is also "N followed by F").

Exclusion (§2.4): every stream chunk carries the index of a datastore document whose chunks it may not
retrieve (-1: none). Training on the datastore's own documents excludes the chunk's own document, so chunk
u+1 never leaks into chunk u's neighbours; an evaluation document excludes the datastore document with the
same id, in case it was indexed too. Search fetches extra candidates (up to k + the excluded document's
chunk count) so that k survive whenever k exist.

Nothing is ever wrapped to another document: a missing neighbour (fewer than k candidates survive) or a
missing continuation (the neighbour ends its document) stays padding (token 0) with `mask` False; a missing
neighbour also has id -1 and score -inf.

    OUT/
      manifest.json   format, version, k, m, r, datastore identity, stream, search, encoder, tokenizer, counts
      neighbours.npy  int32 (n_chunks, k, r): token ids of [N, F], 0 where mask is False
      mask.npy        bool (n_chunks, k, r): True on real tokens
      ids.npy         int64 (n_chunks, k): neighbour datastore chunk (passage) ids, -1 when missing
      scores.npy      float32 (n_chunks, k): inner products (cosines for normalized encoders), -inf when missing
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import dumps_json, load_npy, read_json, write_json_atomic
from ..errors import ConfigError, DatastoreError
from ..progress import progress
from ..retrieval.indexes import check_k

log = logging.getLogger(__name__)

FORMAT = "relm-retro-neighbours"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NO_DOC = -1  # stream_doc value: exclude nothing
PAD = 0  # token id written where mask is False
# candidates fetched beyond k on the first search; rows still short of k after exclusion are searched again
# with k + (their excluded document's chunk count), which guarantees k survivors for exact search
EXTRA_CANDIDATES = 16

ARRAYS = {  # name -> (file, dtype)
    "neighbours": ("neighbours.npy", np.dtype(np.int32)),
    "mask": ("mask.npy", np.dtype(np.bool_)),
    "ids": ("ids.npy", np.dtype(np.int64)),
    "scores": ("scores.npy", np.dtype(np.float32)),
}

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


# -- checks and identities --------------------------------------------------------------------------


def chunk_size(ds) -> int:
    """m, the datastore's chunk length in tokens; refuses a word-passage datastore."""
    if ds.manifest.get("tokens") is None:
        raise DatastoreError(
            f"{ds.root} holds word passages, not token chunks; RETRO neighbours need a token-mode "
            "datastore: build it with --chunk-tokens 64"
        )
    if len(ds) == 0:
        raise DatastoreError(f"{ds.root} holds no chunks; build it from a non-empty corpus")
    return int(ds.manifest["chunker"]["chunk_tokens"])


def check_chunk_size(m: int, ds) -> int:
    want = chunk_size(ds)
    if int(m) != want:
        raise ConfigError(
            f"stream chunks have {m} tokens but the datastore {ds.root} has {want}-token chunks; "
            f"cut the stream into {want}-token chunks (or build a datastore with --chunk-tokens {m})"
        )
    return want


def manifest_fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 of the datastore manifest: changes with every build and update (generation, counts)."""
    return hashlib.sha256(dumps_json(manifest).encode("utf-8")).hexdigest()[:16]


def datastore_identity(ds) -> dict[str, Any]:
    """What a neighbour database depends on; `NeighbourDB.open(path, ds)` compares these."""
    tokens = ds.manifest.get("tokens") or {}
    return {
        "root": str(Path(ds.root).resolve()),
        "fingerprint": manifest_fingerprint(ds.manifest),
        "generation": ds.generation,
        "passages": len(ds),
        "documents": ds.n_documents,
        "tokenizer_fingerprint": (tokens.get("tokenizer") or {}).get("fingerprint"),
        "encoder_fingerprint": ds.manifest["encoder"]["fingerprint"],
    }


def resolve_tokenizer(ds, tokenizer=None):
    """The datastore's tokenizer (loaded from its manifest) or `tokenizer` (a relm Tokenizer or a spec),
    checked against the fingerprint the datastore recorded."""
    from ..corpus.tokenizer import load_tokenizer

    chunk_size(ds)
    recorded = ds.manifest["tokens"]["tokenizer"]
    if tokenizer is None:
        tokenizer = load_tokenizer(recorded["name"])
    elif isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(str(tokenizer))
    if tokenizer.fingerprint != recorded["fingerprint"]:
        raise ConfigError(
            f"tokenizer {tokenizer.name!r} (fingerprint {tokenizer.fingerprint}) is not the one that chunked "
            f"{ds.root} ({recorded['name']!r}, fingerprint {recorded['fingerprint']}); tokenize the stream "
            "with the datastore's tokenizer (pass tokenizer=None)"
        )
    return tokenizer


def resolve_encoder(ds, encoder=None):
    """The datastore's encoder, or `encoder` checked against the fingerprint the datastore recorded."""
    if encoder is None:
        return ds.encoder()
    if hasattr(encoder, "identity"):
        fp, want = encoder.identity()["fingerprint"], ds.manifest["encoder"]["fingerprint"]
        if fp != want:
            raise ConfigError(
                f"encoder (fingerprint {fp}) is not the one that embedded {ds.root} (fingerprint {want}); "
                "pass encoder=None to use the datastore's"
            )
    return encoder


def as_chunks(stream_ids: np.ndarray, m: int) -> np.ndarray:
    """(n_chunks, m) view of a stream: a 2-d array as is, a 1-d token stream cut into m-token chunks
    (a tail shorter than m is dropped: see `datastore_stream` for why)."""
    a = stream_ids if isinstance(stream_ids, np.ndarray) else np.asarray(stream_ids)  # keeps a memmap mapped
    if a.ndim == 1:
        a = a[: len(a) // m * m].reshape(-1, m)
    if a.ndim != 2:
        raise ConfigError(f"stream_ids must be (n_chunks, m) or a 1-d token stream, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ConfigError(f"empty stream: no {m}-token chunk to retrieve for; give at least {m} tokens")
    if not np.issubdtype(a.dtype, np.integer):
        raise ConfigError(f"stream_ids must hold integer token ids, got dtype {a.dtype}")
    return a


def check_stream_doc(stream_doc: np.ndarray, n_chunks: int, n_documents: int) -> np.ndarray:
    """int64 (n_chunks,) excluded datastore document per chunk, each -1 or in [0, n_documents)."""
    d = np.asarray(stream_doc)
    if d.shape != (n_chunks,) or not np.issubdtype(d.dtype, np.integer):
        raise ConfigError(
            f"stream_doc must be an integer array of shape ({n_chunks},), one excluded datastore document "
            f"per chunk (-1: none), got {d.dtype} {d.shape}"
        )
    d = d.astype(np.int64)
    bad = (d < NO_DOC) | (d >= n_documents)
    if bad.any():
        raise ConfigError(f"stream_doc value {d[bad][0]} is not -1 or a document index in [0, {n_documents})")
    return d


# -- streams ----------------------------------------------------------------------------------------


def full_chunk_ids(ds) -> np.ndarray:
    """int64 ids of the datastore chunks that `datastore_stream` returns, in order: the chunks of exactly
    m tokens of live (not deleted) documents."""
    m = chunk_size(ds)
    ids_off = ds.manifest["tokens"]["offsets"]
    lengths = np.diff(load_npy(ds.root / ids_off).astype(np.int64))
    keep = lengths == m
    live = ds.allowed()
    if live is not None:
        keep &= live
    return np.flatnonzero(keep).astype(np.int64)


def datastore_stream(ds) -> tuple[np.ndarray, np.ndarray]:
    """The datastore's own chunks as a training stream: (stream_ids (n, m) int64, stream_doc (n,) int64),
    each chunk excluding its own document. Row r is datastore chunk `full_chunk_ids(ds)[r]`.

    Only chunks of exactly m tokens are kept: a document's shorter last chunk is dropped, because
    chunked cross-attention lets chunk u's neighbours condition only the tokens from chunk u's last
    position onwards, which for a partial final chunk lie outside its document.
    """
    m = chunk_size(ds)
    ids = full_chunk_ids(ds)
    out = np.empty((len(ids), m), dtype=np.int64)
    for row, i in enumerate(ids):
        out[row] = ds.chunk_tokens(int(i))
    return out, np.asarray(ds.doc_index[ids], dtype=np.int64)


def _id_and_text(doc: Any) -> tuple[str, str]:
    if isinstance(doc, dict):
        return str(doc["id"]), doc["text"]
    if isinstance(doc, tuple | list) and len(doc) == 2:
        return str(doc[0]), doc[1]
    return str(doc.id), doc.text  # relm.corpus.documents.Document


def document_indexes(ds, doc_ids: Iterable[str]) -> dict[str, int]:
    """{id: datastore document index} for the ids the datastore holds (ids are unique in a datastore);
    reads the document records once, stopping as soon as every id is found."""
    wanted = set(doc_ids)
    found: dict[str, int] = {}
    for j in range(ds.n_documents):
        if len(found) == len(wanted):
            break
        doc_id = ds.document(j)["id"]
        if doc_id in wanted:
            found[doc_id] = j
    return found


def text_stream(
    docs: Iterable[Any], tokenizer, ds, m: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation documents as a stream: (stream_ids (n, m) int64, stream_doc (n,) int64, doc_boundaries).

    `docs`: dicts with "id" and "text", (id, text) pairs or `Document`s. Each document is tokenized on its
    own (tokenizer None: the datastore's) and cut into m-token chunks; its last partial chunk is dropped
    (as in `datastore_stream`), so document d owns rows [doc_boundaries[d], doc_boundaries[d+1]) and a
    document shorter than m tokens owns none. A chunk excludes the datastore document with its document's
    id (-1 when the datastore has no such document).
    """
    want = chunk_size(ds)
    m = check_chunk_size(want if m is None else m, ds)
    tokenizer = resolve_tokenizer(ds, tokenizer)
    pairs = [_id_and_text(d) for d in docs]
    index = document_indexes(ds, (i for i, _ in pairs))
    rows: list[np.ndarray] = []
    excl: list[np.ndarray] = []
    bounds = [0]
    for doc_id, text in pairs:
        ids, _ = tokenizer.encode(text)
        n = len(ids) // m
        rows.append(ids[: n * m].reshape(n, m))
        excl.append(np.full(n, index.get(doc_id, NO_DOC), dtype=np.int64))
        bounds.append(bounds[-1] + n)
    stream = np.concatenate(rows) if rows else np.zeros((0, m), np.int64)
    stream_doc = np.concatenate(excl) if excl else np.zeros(0, np.int64)
    return stream.astype(np.int64), stream_doc, np.asarray(bounds, dtype=np.int64)


# -- search and assembly: small array functions -----------------------------------------------------


def select_neighbours(
    scores: np.ndarray, ids: np.ndarray, cand_doc: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k candidates of each row (best first) that are real (id >= 0) and not of the row's
    excluded document: (scores (nq, k) float32 with -inf, ids (nq, k) int64 with -1 where missing)."""
    keep = (ids >= 0) & (cand_doc != excluded[:, None])
    rank = np.cumsum(keep, axis=1) - 1  # position among the kept candidates of the row
    rows, cols = np.nonzero(keep & (rank < k))
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    out_s[rows, rank[rows, cols]] = scores[rows, cols]
    out_i[rows, rank[rows, cols]] = ids[rows, cols]
    return out_s, out_i


def search_excluding(
    search: Search,
    vectors: np.ndarray,
    excluded: np.ndarray,
    k: int,
    doc_index: np.ndarray,
    doc_sizes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest chunks per query vector outside its excluded document (see `select_neighbours`).

    A first search fetches k + EXTRA_CANDIDATES; rows left short of k are searched again with
    k + (chunks of their excluded document), enough for exact search to leave k when k exist.
    """
    n = len(doc_index)
    own = np.where(excluded >= 0, doc_sizes[np.maximum(excluded, 0)], 0)
    need = np.minimum(k + own, n)

    def run(rows: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        s, i = search(vectors[rows], kk)
        return select_neighbours(s, i, doc_index[np.maximum(i, 0)].astype(np.int64), excluded[rows], k)

    first = min(n, k + EXTRA_CANDIDATES)
    scores, ids = run(np.arange(len(vectors)), first)
    again = np.flatnonzero(((ids >= 0).sum(axis=1) < k) & (need > first))
    if len(again):
        scores[again], ids[again] = run(again, int(need[again].max()))
    return scores, ids


def gather_neighbours(ds, ids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """[N, F] token ids and mask for neighbour ids (nq, k): (tokens (nq, k, 2m) int32, mask, missing F).

    N fills [0, len(N)), F (the next chunk of N's document) fills [m, m + len(F)); the rest is PAD/False.
    """
    nq, k = ids.shape
    tokens = np.full((nq, k, 2 * m), PAD, dtype=np.int32)
    mask = np.zeros((nq, k, 2 * m), dtype=bool)
    missing = 0
    for (q, j), i in np.ndenumerate(ids):
        if i < 0:
            continue
        chunk = ds.chunk_tokens(int(i))
        assert len(chunk) <= m, f"chunk {i} has {len(chunk)} > {m} tokens"
        tokens[q, j, : len(chunk)] = chunk
        mask[q, j, : len(chunk)] = True
        cont = ds.continuation(int(i))  # None when i ends its document: never another document's chunk
        if cont is None:
            missing += 1
            continue
        tokens[q, j, m : m + len(cont)] = cont
        mask[q, j, m : m + len(cont)] = True
    return tokens, mask, missing


def _searcher(ds, retriever) -> tuple[Search, dict[str, Any]]:
    """search(vectors, k) through a `Retriever` of `ds` (None: exact), and its description for the manifest.
    Tombstoned documents are never neighbours (every Retriever search excludes them)."""
    from ..retrieval.retriever import Retriever, SearchOptions

    if retriever is None:
        retriever = Retriever(ds)
    if not isinstance(retriever, Retriever):
        raise ConfigError(f"retriever must be a Retriever, got {type(retriever).__name__}")
    if Path(retriever.ds.root).resolve() != Path(ds.root).resolve() or retriever.ds.revision != ds.revision:
        raise ConfigError(f"the retriever searches {retriever.ds.root} at revision {retriever.ds.revision}, not "
                          f"{ds.root} at revision {ds.revision}; build it on the same datastore")
    if not retriever.config.takes_vectors:
        raise ConfigError(f"RETRO neighbours are searched by chunk embedding; the {retriever.kind} retriever "
                          "needs text: use an exact, ann or sharded retriever")
    return (lambda v, kk: retriever.search_vectors(v, SearchOptions(k=kk))), retriever.describe()


def generation_retriever(retriever, tokenizer, k: int, *, vectors: bool = False) -> Callable[[np.ndarray], Any]:
    """retrieve(chunk) for `RetroModel.generate`: the k nearest datastore chunks of a generated m-token chunk
    (its decoded text is the query, searched by any `Retriever`), as ([N, F] tokens (k, 2m) int64, mask
    (k, 2m) bool), or for ReLM fusion (`vectors`) as (their passage vectors (k, d) float32, found (k,) bool)."""
    from ..retrieval.options import SearchOptions

    opts, ds = SearchOptions(k=check_k(k)), retriever.ds
    m = chunk_size(ds)

    def retrieve(chunk: np.ndarray):
        _, ids = retriever.search_ids([tokenizer.decode(chunk).strip() or "."], opts)
        if vectors:
            found = ids[0] >= 0
            vecs = np.zeros((k, ds.dim), np.float32)
            vecs[found] = ds.embeddings(ids[0][found]).astype(np.float32)
            return vecs, found
        tokens, mask, _ = gather_neighbours(ds, ids, m)
        return tokens[0].astype(np.int64), mask[0]

    return retrieve


# -- building ---------------------------------------------------------------------------------------


def build_neighbours(
    ds,
    stream_ids: np.ndarray,
    stream_doc: np.ndarray,
    out: str | os.PathLike,
    *,
    k: int = 2,
    retriever=None,
    tokenizer=None,
    encoder=None,
    block: int = 1024,
    batch_size: int = 64,
    show_progress: bool | None = None,
    description: str = "",
    overwrite: bool = False,
    query_vectors: np.ndarray | None = None,
) -> NeighbourDB:
    """Retrieve k neighbours [N, F] for every m-token chunk of a stream and save them as a `NeighbourDB`.

    stream_ids: (n_chunks, m) token ids, or a 1-d token stream cut into m-token chunks.
    stream_doc: (n_chunks,) the datastore document each chunk may not retrieve from (-1: none).
    retriever: the `Retriever` (exact, ann or sharded) searching `ds` for them; None: exact search.
    tokenizer / encoder: default to the datastore's own; others are refused unless their fingerprints
        match the datastore manifest's. Chunks are processed `block` at a time (memory: one block of
        query vectors and neighbours); the directory is written to OUT.tmp and moved into place.
    query_vectors: (n_chunks, d) embeddings of the stream's chunks when they are already known, e.g.
        `ds.embeddings(full_chunk_ids(ds))` for `datastore_stream(ds)`: the datastore's keys are the
        encoder's embeddings of those very chunks, so they need no second encoding.
    """
    t_start = time.perf_counter()
    try:
        k = check_k(k)
    except ConfigError:
        raise ConfigError(f"k must be an integer >= 1 (neighbours per chunk), got {k!r}") from None
    if not isinstance(block, int) or block < 1:
        raise ConfigError(f"block must be an integer >= 1 (query chunks per search), got {block!r}")
    m = chunk_size(ds)
    chunks = as_chunks(stream_ids, m)
    check_chunk_size(chunks.shape[1], ds)
    excluded = check_stream_doc(stream_doc, len(chunks), ds.n_documents)
    tok = resolve_tokenizer(ds, tokenizer)
    enc = resolve_encoder(ds, encoder)
    search, search_info = _searcher(ds, retriever)
    if query_vectors is not None and np.shape(query_vectors) != (len(chunks), ds.dim):
        raise ConfigError(f"query_vectors has shape {np.shape(query_vectors)}, the stream needs "
                          f"({len(chunks)}, {ds.dim})")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DatastoreError(f"{out} exists; pass overwrite=True to rebuild the neighbours")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted build
    tmp.mkdir(parents=True)
    try:
        counts, seconds, stream_hash = _fill(
            tmp, ds, chunks, excluded, k, m, tok, enc, search, block, batch_size, show_progress, query_vectors
        )
        seconds["total"] = time.perf_counter() - t_start
        n, r = len(chunks), 2 * m
        shapes = {"neighbours": [n, k, r], "mask": [n, k, r], "ids": [n, k], "scores": [n, k]}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "k": k,
            "chunk_size": m,
            "neighbour_len": r,
            "n_chunks": n,
            "datastore": datastore_identity(ds),
            "stream": {
                "description": description,
                "chunks": n,
                "excluding": int((excluded >= 0).sum()),
                "sha256": stream_hash,
            },
            "search": search_info,
            "encoder": enc.identity() if hasattr(enc, "identity") else dict(ds.manifest["encoder"]),
            "tokenizer": tok.identity(),
            "counts": counts,
            "arrays": {
                name: {"file": f, "dtype": dt.name, "shape": shapes[name]} for name, (f, dt) in ARRAYS.items()
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": {key: round(v, 4) for key, v in seconds.items()},
        }
        write_json_atomic(tmp / MANIFEST, manifest)  # last: a directory without one is unfinished
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built %d x %d RETRO neighbours in %s (%.1fs)", n, k, out, seconds["total"])
    return NeighbourDB.open(out, ds)


def _fill(tmp, ds, chunks, excluded, k, m, tok, enc, search, block, batch_size, show_progress,
          query_vectors=None):
    """Encode, search and gather block by block into memory-mapped arrays under tmp."""
    n = len(chunks)
    shapes = {"neighbours": (n, k, 2 * m), "mask": (n, k, 2 * m), "ids": (n, k), "scores": (n, k)}
    arrays = {
        name: np.lib.format.open_memmap(tmp / f, mode="w+", dtype=dt, shape=shapes[name])
        for name, (f, dt) in ARRAYS.items()
    }
    doc_index = np.asarray(ds.doc_index)
    doc_sizes = np.diff(np.asarray(ds.doc_passages, dtype=np.int64))
    normalize = ds.manifest["encoder"]["normalize"]
    vocab = tok.vocab_size
    h = hashlib.sha256()
    seconds = {"encode": 0.0, "search": 0.0, "gather": 0.0}
    missing_f = 0
    with progress(total=n, desc="retro neighbours", unit="chunk", enabled=show_progress) as bar:
        for a in range(0, n, block):
            q = np.asarray(chunks[a : a + block], dtype=np.int64)  # (B, m)
            if q.min() < 0 or q.max() >= vocab:
                bad = q[(q < 0) | (q >= vocab)][0]
                raise ConfigError(
                    f"stream chunk rows {a}..{a + len(q) - 1}: token id {bad} is outside the tokenizer's "
                    f"vocabulary ({vocab}); tokenize the stream with the datastore's tokenizer"
                )
            ex = excluded[a : a + len(q)]
            h.update(q.tobytes())
            h.update(ex.tobytes())
            t0 = time.perf_counter()
            if query_vectors is not None:
                vectors = np.asarray(query_vectors[a : a + len(q)], dtype=np.float32)
            else:  # the encoder directly, not ds.encode_queries: a chunk may decode to whitespace only
                vectors = enc.encode([tok.decode(row) for row in q], batch_size=batch_size, normalize=normalize)
            t1 = time.perf_counter()
            scores, ids = search_excluding(search, np.asarray(vectors, np.float32), ex, k, doc_index, doc_sizes)
            t2 = time.perf_counter()
            toks, mask, miss = gather_neighbours(ds, ids, m)
            seconds["encode"] += t1 - t0
            seconds["search"] += t2 - t1
            seconds["gather"] += time.perf_counter() - t2
            missing_f += miss
            sl = slice(a, a + len(q))
            arrays["neighbours"][sl], arrays["mask"][sl] = toks, mask
            arrays["ids"][sl], arrays["scores"][sl] = ids, scores
            bar.update(len(q))
    missing_n = 0
    for name, arr in arrays.items():
        if name == "ids":
            missing_n = int((arr < 0).sum())
        arr.flush()
        with open(arr.filename, "rb") as f:
            os.fsync(f.fileno())
    del arrays
    counts = {
        "neighbours": n * k - missing_n,
        "missing_neighbours": missing_n,
        "missing_continuations": missing_f,
    }
    return counts, seconds, h.hexdigest()[:16]


def _move_into_place(tmp: Path, out: Path) -> None:
    """os.replace a finished directory onto `out` (an existing one is moved aside first, then removed)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# -- the opened database ----------------------------------------------------------------------------


class NeighbourDB:
    """A finished neighbour database, memory-mapped: row u holds the k neighbours [N, F] of stream chunk u."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike, ds=None) -> NeighbourDB:
        """Open and check OUT/; with `ds`, also check that it was built for this datastore as it is now."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise DatastoreError(f"{path}: no RETRO neighbour database (no {MANIFEST}); build it with build_neighbours")
        manifest = read_json(path / MANIFEST)
        if manifest.get("format") != FORMAT:
            raise DatastoreError(f"{path}: not a RETRO neighbour database (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DatastoreError(
                f"{path}: neighbour database version {manifest.get('format_version')!r} is not supported "
                f"(this relm reads {FORMAT_VERSION}); rebuild it with build_neighbours"
            )
        db = cls(path, manifest)
        for name in ARRAYS:
            db._array(name)  # maps and checks every array now
        if ds is not None:
            db.check_datastore(ds)
        return db

    def check_datastore(self, ds) -> None:
        built, now = self.manifest["datastore"], datastore_identity(ds)
        diff = [key for key in ("fingerprint", "passages", "tokenizer_fingerprint") if built.get(key) != now[key]]
        if diff:
            raise DatastoreError(
                f"{self.path}: neighbours built for another datastore ({built['root']}, {built['passages']:,} "
                f"chunks, generation {built['generation']}) than {ds.root} ({now['passages']:,} chunks, "
                f"generation {now['generation']}; differs in {', '.join(diff)}); rebuild with "
                f"build_neighbours(ds, stream_ids, stream_doc, {str(self.path)!r}, overwrite=True)"
            )

    def _array(self, name: str) -> np.ndarray:
        spec = self.manifest["arrays"][name]
        file = self.path / spec["file"]
        if not file.exists():
            raise DatastoreError(f"{self.path}: damaged neighbour database, missing {spec['file']}; rebuild it")
        arr = load_npy(file)
        if list(arr.shape) != spec["shape"] or arr.dtype.name != spec["dtype"]:
            raise DatastoreError(
                f"{file}: holds {arr.dtype} {arr.shape}, the manifest says {spec['dtype']} {tuple(spec['shape'])}; "
                "rebuild the neighbour database"
            )
        return arr

    @cached_property
    def neighbours(self) -> np.ndarray:
        """int32 (n_chunks, k, r) token ids of [N, F]."""
        return self._array("neighbours")

    @cached_property
    def mask(self) -> np.ndarray:
        """bool (n_chunks, k, r): True on real tokens."""
        return self._array("mask")

    @cached_property
    def ids(self) -> np.ndarray:
        """int64 (n_chunks, k) neighbour chunk ids, -1 when missing."""
        return self._array("ids")

    @cached_property
    def scores(self) -> np.ndarray:
        """float32 (n_chunks, k), -inf when missing."""
        return self._array("scores")

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    @property
    def neighbour_len(self) -> int:
        return int(self.manifest["neighbour_len"])

    def __len__(self) -> int:
        return int(self.manifest["n_chunks"])

    def batch(self, chunk_indices) -> tuple[np.ndarray, np.ndarray]:
        """(neighbours (B, k, r) int64, mask (B, k, r) bool) for stream chunks `chunk_indices`, in memory."""
        idx = np.asarray(chunk_indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"chunk index out of range [0, {len(self)})")
        return np.asarray(self.neighbours[idx], dtype=np.int64), np.array(self.mask[idx], dtype=bool)
