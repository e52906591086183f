"""`assemble`: write one datastore from runs of documents taken from others.

A *segment* is a datastore and the documents to take from it, in order. `assemble` concatenates the
segments' passages, records, domains, timestamps, tokens and vectors into a new datastore (document
and passage ids renumbered from 0, domains coded in first-seen order, vectors re-cut into shards of
`shard_size` rows) and returns its typed manifest, without writing `manifest.json` (the caller commits
it: directly, or through the journal). It is what a compaction writes (one segment: the live
documents) and the merge step of a build split into parts (`build_in_parts`: each part a datastore of
`files[rank::world_size]`, merged back in input order with a cross-part duplicate-id check), so a
build split into parts and assembled is byte-identical to the one-process build.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import AtomicWriter, save_npy_atomic
from ..errors import DatastoreError, InputError
from . import layout as L
from .ids import IdRegistry
from .manifest import Counts, EmbeddingShard, Manifest


@dataclass(frozen=True)
class Segment:
    ds: Any  # a Datastore (or a writer's view of one)
    docs: np.ndarray  # sorted document indexes of ds to take


def assemble(out: Path, segments: Sequence[Segment], *, shard_size: int, build: dict[str, Any],
             inputs: Sequence[dict[str, Any]], check_ids: bool = False, vectors: bool = True) -> Manifest:
    """Write the concatenation of `segments` under `out`; returns its manifest (not written). `vectors`
    False: the embedding shards are listed in the manifest but not written (nor read from the segments,
    which may have none: `layout.DEFERRED`); the caller encodes and writes them."""
    if not segments:
        raise DatastoreError("assemble needs at least one segment")
    first = segments[0].ds.meta
    tokenizer = (first.tokens or {}).get("tokenizer")
    for seg in segments[1:]:
        m = seg.ds.meta
        if m.encoder["fingerprint"] != first.encoder["fingerprint"] or (m.tokens or {}).get("tokenizer") != tokenizer:
            raise DatastoreError(f"{seg.ds.root}: built with another encoder or tokenizer than {segments[0].ds.root}")
    ids = IdRegistry() if check_ids else None
    text = AtomicWriter(out / L.PASSAGE_TEXT)
    records = AtomicWriter(out / L.DOC_RECORDS)
    lengths, doc_sizes, rec_sizes, stamps, domain_codes, tok_parts, tok_lengths = [], [], [], [], [], [], []
    names: dict[str, int] = {}
    words = 0
    shards: list[EmbeddingShard] = []
    buf: list[np.ndarray] = []
    buffered = written = 0

    def flush() -> None:
        nonlocal buffered, written
        if buffered:
            rel = L.embedding_shard(len(shards))
            if vectors:
                save_npy_atomic(out / rel, np.concatenate(buf).astype(np.float16))
            shards.append(EmbeddingShard(rel, written, buffered))
            written += buffered
            buf.clear()
            buffered = 0

    try:
        for seg in segments:
            ds = seg.ds
            dp, off = ds.doc_passages, ds.passage_offsets
            domain_names = ds.domains
            everything = len(seg.docs) == ds.n_documents  # a whole datastore: its own word count is exact
            if everything:
                words += ds.meta.counts.words
            for j in seg.docs.tolist():
                rec = ds.record_bytes(j)
                if ids is not None:
                    doc_id = json.loads(rec)["id"]
                    if not ids.add(doc_id):
                        raise InputError(str(ds.root), None, "duplicate_id",
                                         f"document id {doc_id!r} appears in more than one part; ids must be unique")
                records.write(rec)
                rec_sizes.append(len(rec))
                name = domain_names[int(ds.doc_domain[j])]
                domain_codes.append(names.setdefault(name, len(names)))
                stamps.append(int(ds.doc_timestamp[j]))
                a, b = int(dp[j]), int(dp[j + 1])
                doc_sizes.append(b - a)
                text.write(ds.text_bytes(a, b))
                lengths.append(np.diff(np.asarray(off[a : b + 1], dtype=np.int64)))
                if not everything:
                    words += sum(len(ds.passage(i).split()) for i in range(a, b))
                if ds.manifest.get("tokens"):
                    t_ids, t_off = ds.token_arrays
                    tok_parts.append(np.asarray(t_ids[int(t_off[a]) : int(t_off[b])]))
                    tok_lengths.append(np.diff(np.asarray(t_off[a : b + 1], dtype=np.int64)))
                start = a
                while start < b:  # vectors, re-cut into shards of shard_size rows
                    take = min(shard_size - buffered, b - start)
                    if vectors:
                        buf.append(ds.embeddings(np.arange(start, start + take)))
                    buffered += take
                    start += take
                    if buffered == shard_size:
                        flush()
        flush()
    except BaseException:
        text.abort()
        records.abort()
        raise
    text.commit()
    records.commit()
    if len(names) > 2**16:
        raise DatastoreError("more than 65,536 distinct domains")
    n_docs = len(doc_sizes)
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(lens) + 1, dtype=np.uint64)
    np.cumsum(lens, out=offsets[1:])
    save_npy_atomic(out / L.PASSAGE_OFFSETS, offsets)
    doc_index = np.repeat(np.arange(n_docs, dtype=np.uint32), doc_sizes)
    save_npy_atomic(out / L.PASSAGE_DOC, doc_index)
    rec_off = np.zeros(n_docs + 1, dtype=np.uint64)
    np.cumsum(rec_sizes, out=rec_off[1:])
    save_npy_atomic(out / L.DOC_OFFSETS, rec_off)
    doc_passages = np.zeros(n_docs + 1, dtype=np.uint64)
    np.cumsum(doc_sizes, out=doc_passages[1:])
    save_npy_atomic(out / L.DOC_PASSAGES, doc_passages)
    domain = np.asarray(domain_codes, dtype=np.uint16)
    save_npy_atomic(out / L.DOC_DOMAIN, domain)
    save_npy_atomic(out / L.DOC_TIMESTAMP, np.asarray(stamps, dtype=np.int64))
    tokens = None
    if first.tokens:
        dtype = np.dtype(first.tokens["dtype"])
        t_all = np.concatenate(tok_parts).astype(dtype) if tok_parts else np.zeros(0, dtype)
        t_len = np.concatenate(tok_lengths) if tok_lengths else np.zeros(0, np.int64)
        t_off = np.zeros(len(t_len) + 1, dtype=np.uint64)
        np.cumsum(t_len, out=t_off[1:])
        save_npy_atomic(out / L.TOKEN_IDS, t_all)
        save_npy_atomic(out / L.TOKEN_OFFSETS, t_off)
        tokens = {**first.tokens, "count": int(t_off[-1])}
    counts = np.bincount(domain, minlength=len(names))
    return Manifest(
        kind=first.kind, encoder=first.encoder, chunker=first.chunker, tokens=tokens,
        counts=Counts(documents=n_docs, passages=int(len(lens)), words=int(words),
                      tokens=int(tokens["count"]) if tokens else None, text_bytes=int(offsets[-1]),
                      shards=len(shards)),
        dim=first.dim, shards=tuple(shards),
        domains=tuple({"name": name, "documents": int(counts[code])} for name, code in names.items()),
        inputs=tuple(inputs), build=build,
    )
