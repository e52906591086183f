"""Updating a datastore without retraining: add documents, delete (tombstone) them, compact.

- `add_documents`: the new inputs are built into `DS/.update/new/` with the
  datastore's own chunker and encoder (a normal, resumable build), then merged:
  their embedding shards become new shards, passage text and document records
  are appended, the index arrays are rewritten, and every index is brought up
  to date by the caller (see `relm.retrieval.maintenance`). Passage ids of
  existing passages never change.
- `delete_documents`: tombstones in `deleted.npy` (sorted uint32 document
  indexes). Nothing is rewritten; every search masks tombstoned passages.
- `compact`: writes a new datastore without the tombstoned documents (ids
  renumbered) and swaps it in.

Every update is a journaled commit: new arrays are staged under
`DS/.update/stage/`, `DS/.update/commit.json` lists the moves and the new
manifest, then the moves are applied and the manifest written last. A commit
interrupted midway is rolled forward by `recover()`, which `Datastore.open`
runs, so readers never see half an update. Appends to `text.bin` and
`records.jsonl` happen in place beyond their recorded sizes, which a failed
attempt's leftovers cannot affect (a retry truncates them first).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import AtomicWriter, load_npy, read_json, save_npy_atomic, write_json_atomic
from ..config import BuildConfig, ReaderConfig
from ..corpus.readers import read_documents, resolve_inputs
from ..errors import ConfigError, DatastoreError, InputError
from . import layout as L
from .ids import IdRegistry

log = logging.getLogger(__name__)

UPDATE_DIR = ".update"
DELETED = "deleted.npy"


# -- journaled commit ---------------------------------------------------------------------------
def _commit(root: Path, moves: list[tuple[str, str]], manifest: dict[str, Any]) -> None:
    write_json_atomic(root / UPDATE_DIR / "commit.json", {"moves": moves, "manifest": manifest})
    recover(root)


def recover(root: str | Path) -> bool:
    """Finish a journaled commit that was interrupted; True when there was one."""
    root = Path(root)
    journal = root / UPDATE_DIR / "commit.json"
    if not journal.exists():
        return False
    plan = read_json(journal)
    for src, dst in plan["moves"]:
        if (root / src).exists():
            (root / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / src, root / dst)
    write_json_atomic(root / L.MANIFEST, plan["manifest"])
    shutil.rmtree(root / UPDATE_DIR)
    log.info("%s: finished an interrupted update", root)
    return True


def _bump(manifest: dict[str, Any], op: dict[str, Any], *, new_generation: bool) -> dict[str, Any]:
    m = dict(manifest)
    m["revision"] = int(m.get("revision", 0)) + 1
    if new_generation:
        m["generation"] = int(m.get("generation", 0)) + 1
    m["updates"] = [*m.get("updates", []), op]
    return m


# -- tombstones ---------------------------------------------------------------------------------
def read_deleted(root: str | Path) -> np.ndarray:
    path = Path(root) / DELETED
    return load_npy(path, mmap=False).astype(np.uint32) if path.exists() else np.zeros(0, dtype=np.uint32)


def _doc_ids(ds) -> dict[str, int]:
    """id -> document index for every document (one pass over the records)."""
    out: dict[str, int] = {}
    with open(ds.root / L.DOC_RECORDS, "rb") as f:
        for j, line in enumerate(f):
            out[json.loads(line)["id"]] = j
    return out


def delete_documents(ds, doc_ids: list[str]):
    """Tombstone documents by id. Unknown ids are an error (nothing is changed)."""
    from .store import Datastore

    if not doc_ids:
        raise ConfigError("give at least one --doc-id")
    index = _doc_ids(ds)
    unknown = [d for d in doc_ids if d not in index]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
        raise ConfigError(f"{len(unknown)} unknown document id(s) in {ds.root}: {shown}; nothing was deleted")
    old = read_deleted(ds.root)
    new = np.union1d(old, np.asarray([index[d] for d in doc_ids], dtype=np.uint32)).astype(np.uint32)
    already = len(old) + len(set(doc_ids)) - len(new)
    if already:
        log.warning("%d of the documents were already deleted", already)
    stage = ds.root / UPDATE_DIR / "stage"
    save_npy_atomic(stage / DELETED, new)
    passages = int(np.sum(np.diff(ds.doc_passages.astype(np.int64))[new])) if len(new) else 0
    manifest = _bump(ds.manifest, {"op": "delete", "documents": len(new) - len(old)}, new_generation=False)
    manifest["deleted"] = {"documents": int(len(new)), "passages": passages}
    _commit(ds.root, [(f"{UPDATE_DIR}/stage/{DELETED}", DELETED)], manifest)
    return Datastore.open(ds.root)


# -- add ------------------------------------------------------------------------------------------
def add_documents(
    ds,
    inputs: list[str | Path],
    reader: ReaderConfig | None = None,
    *,
    show_progress: bool | None = None,
    encoder=None,
):
    """Embed new documents with the datastore's own settings and append them. Returns the reopened Datastore.

    Indexes are not touched here; `relm.retrieval.maintenance.update_indexes` adds the new vectors to them.
    """
    from .build import build_datastore
    from .store import Datastore

    plan_config = BuildConfig.from_dict(ds.manifest["build"]["plan"]["config"])
    config = BuildConfig(
        reader=reader or plan_config.reader,
        chunk=plan_config.chunk,
        encoder=plan_config.encoder,
        batch_size=plan_config.batch_size,
        shard_size=plan_config.shard_size,
    )
    _check_new_ids(ds, inputs, config.reader)
    work = ds.root / UPDATE_DIR / "new"
    new = build_datastore(inputs, work, config, show_progress=show_progress, encoder=encoder)
    if new.manifest["encoder"]["fingerprint"] != ds.manifest["encoder"]["fingerprint"]:
        raise DatastoreError("the encoder changed since the datastore was built; rebuild it instead of adding")
    if (ds.manifest.get("tokens") or {}).get("tokenizer") != (new.manifest.get("tokens") or {}).get("tokenizer"):
        raise DatastoreError("the tokenizer changed since the datastore was built; rebuild it instead of adding")
    _merge(ds, new)
    shutil.rmtree(work, ignore_errors=True)
    return Datastore.open(ds.root)


def _check_new_ids(ds, inputs, reader: ReaderConfig) -> None:
    """New document ids must not clash with live documents (ids of deleted documents may be reused)."""
    deleted = set(read_deleted(ds.root).tolist())
    live = IdRegistry()
    for doc_id, j in _doc_ids(ds).items():
        if j not in deleted:
            live.add(doc_id)
    live.commit()
    clashes = []
    files = resolve_inputs(inputs, reader)
    for doc in read_documents(files, ReaderConfig(**{**reader.__dict__, "on_error": "skip"})):
        if not live.add(doc.id):
            clashes.append(doc.id)
    if clashes:
        shown = ", ".join(map(repr, clashes[:5])) + (" ..." if len(clashes) > 5 else "")
        raise InputError(
            files[0].display if len(files) == 1 else "<inputs>", None, "duplicate_id",
            f"{len(clashes)} document id(s) already in {ds.root}: {shown}; "
            "delete them first (`relm delete`) to replace them",
        )


def _append_in_place(path: Path, keep_bytes: int, src: Path) -> None:
    """Truncate `path` to `keep_bytes` (dropping a failed attempt's tail), then append `src`."""
    with open(path, "r+b") as f:
        f.truncate(keep_bytes)
        f.seek(keep_bytes)
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 22)
        f.flush()
        os.fsync(f.fileno())


def _merge(ds, new) -> None:
    root, m, nm = ds.root, ds.manifest, new.manifest
    stage_rel = f"{UPDATE_DIR}/stage"
    stage = root / stage_rel
    n, n_docs = len(ds), ds.n_documents
    text_bytes = int(m["counts"]["text_bytes"])
    record_bytes = int(ds._record_offsets[-1])
    moves: list[tuple[str, str]] = []

    def stage_array(rel: str, array: np.ndarray) -> None:
        save_npy_atomic(stage / rel, array)
        moves.append((f"{stage_rel}/{rel}", rel))

    # text and records: appended in place beyond the sizes the manifest records
    _append_in_place(root / L.PASSAGE_TEXT, text_bytes, new.root / L.PASSAGE_TEXT)
    _append_in_place(root / L.DOC_RECORDS, record_bytes, new.root / L.DOC_RECORDS)
    shift = lambda a, by: (np.asarray(a).astype(np.uint64) + np.uint64(by))  # noqa: E731
    stage_array(L.PASSAGE_OFFSETS, np.concatenate([ds._offsets[:-1], shift(new._offsets, text_bytes)]))
    stage_array(L.PASSAGE_DOC, np.concatenate([ds.doc_index, (new.doc_index + n_docs).astype(np.uint32)]))
    stage_array(L.DOC_OFFSETS, np.concatenate([ds._record_offsets[:-1], shift(new._record_offsets, record_bytes)]))
    stage_array(L.DOC_PASSAGES, np.concatenate([ds.doc_passages[:-1], shift(new.doc_passages, n)]))
    stage_array(L.DOC_TIMESTAMP, np.concatenate([ds.doc_timestamp, new.doc_timestamp]))
    names = [d["name"] for d in m["domains"]]
    for d in nm["domains"]:
        if d["name"] not in names:
            names.append(d["name"])
    if len(names) > 2**16:
        raise DatastoreError("more than 65,536 distinct domains")
    remap = np.asarray([names.index(d["name"]) for d in nm["domains"]], dtype=np.uint16)
    domain = np.concatenate([ds.doc_domain, remap[new.doc_domain]]) if len(remap) else np.asarray(ds.doc_domain)
    stage_array(L.DOC_DOMAIN, domain)
    counts = np.bincount(domain, minlength=len(names))
    if m.get("tokens"):
        ids, off = ds._tokens
        new_ids, new_off = new._tokens
        stage_array(L.TOKEN_IDS, np.concatenate([ids, new_ids]))
        stage_array(L.TOKEN_OFFSETS, np.concatenate([off[:-1], shift(new_off, len(ids))]))
    shards = list(m["embeddings"]["shards"])
    for s in nm["embeddings"]["shards"]:
        i = len(shards)
        rel = L.embedding_shard(i)
        shutil.copyfile(new.root / s["file"], stage / f"s{i}.npy")  # copy: a retry may need new/ intact
        moves.append((f"{stage_rel}/s{i}.npy", rel))
        shards.append({"file": rel, "start": n + s["start"], "rows": s["rows"]})

    manifest = _bump(m, {"op": "add", "inputs": [i["path"] for i in nm["inputs"]],
                         "documents": new.n_documents, "passages": len(new)}, new_generation=True)
    c, nc = dict(m["counts"]), nm["counts"]
    c.update(
        documents=c["documents"] + nc["documents"],
        passages=c["passages"] + nc["passages"],
        words=c["words"] + nc["words"],
        tokens=(c["tokens"] + nc["tokens"]) if c.get("tokens") is not None else None,
        text_bytes=text_bytes + nc["text_bytes"],
        shards=len(shards),
    )
    manifest["counts"] = c
    manifest["embeddings"] = {**m["embeddings"], "shards": shards}
    manifest["domains"] = [{"name": name, "documents": int(counts[i])} for i, name in enumerate(names)]
    manifest["inputs"] = [*m["inputs"], *nm["inputs"]]
    if m.get("tokens"):
        manifest["tokens"] = {**m["tokens"], "count": int(m["tokens"]["count"]) + int(nm["tokens"]["count"])}
    _commit(root, moves, manifest)


# -- compact --------------------------------------------------------------------------------------
def compact(ds):
    """Rewrite the datastore without tombstoned documents (passage and document ids are renumbered).

    Returns the reopened Datastore; indexes must be rebuilt (`relm.retrieval.maintenance`).
    """
    from .store import Datastore

    deleted = read_deleted(ds.root)
    if len(deleted) == 0:
        log.info("%s has no deleted documents; nothing to compact", ds.root)
        return ds
    root = ds.root
    tmp = root.with_name(root.name + ".compact")
    if tmp.exists():
        shutil.rmtree(tmp)
    keep_docs = np.ones(ds.n_documents, dtype=bool)
    keep_docs[deleted] = False
    keep = keep_docs[ds.doc_index]  # (n,) passages to keep
    kept_ids = np.nonzero(keep)[0]
    doc_ids = np.nonzero(keep_docs)[0]
    doc_new = np.cumsum(keep_docs) - 1  # old doc index -> new doc index (for kept documents)

    # passage text and offsets
    lengths = np.diff(ds._offsets.astype(np.int64))[kept_ids]
    with AtomicWriter(tmp / L.PASSAGE_TEXT) as f:
        for i in kept_ids:
            f.write(ds._text[int(ds._offsets[i]) : int(ds._offsets[i + 1])])
    offsets = np.zeros(len(kept_ids) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    save_npy_atomic(tmp / L.PASSAGE_OFFSETS, offsets)
    new_doc_index = doc_new[ds.doc_index[kept_ids]].astype(np.uint32)
    save_npy_atomic(tmp / L.PASSAGE_DOC, new_doc_index)
    # documents
    rec_off = np.zeros(len(doc_ids) + 1, dtype=np.uint64)
    with AtomicWriter(tmp / L.DOC_RECORDS) as f:
        for j_new, j in enumerate(doc_ids):
            line = ds._records[int(ds._record_offsets[j]) : int(ds._record_offsets[j + 1])]
            f.write(line)
            rec_off[j_new + 1] = rec_off[j_new] + len(line)
    save_npy_atomic(tmp / L.DOC_OFFSETS, rec_off)
    save_npy_atomic(
        tmp / L.DOC_PASSAGES,
        np.searchsorted(new_doc_index, np.arange(len(doc_ids) + 1), side="left").astype(np.uint64),
    )
    domain = np.asarray(ds.doc_domain)[doc_ids]
    save_npy_atomic(tmp / L.DOC_DOMAIN, domain)
    save_npy_atomic(tmp / L.DOC_TIMESTAMP, np.asarray(ds.doc_timestamp)[doc_ids])
    m = ds.manifest
    if m.get("tokens"):
        ids, off = ds._tokens
        tok_len = np.diff(off.astype(np.int64))[kept_ids]
        new_off = np.zeros(len(kept_ids) + 1, dtype=np.uint64)
        np.cumsum(tok_len, out=new_off[1:])
        save_npy_atomic(tmp / L.TOKEN_IDS, np.concatenate([ids[int(off[i]) : int(off[i + 1])] for i in kept_ids]))
        save_npy_atomic(tmp / L.TOKEN_OFFSETS, new_off)
    # embeddings, resharded to the build's shard size
    shard_size = int(m["build"]["plan"]["config"]["shard_size"])
    shards = []
    for s, a in enumerate(range(0, len(kept_ids), shard_size)):
        rows = kept_ids[a : a + shard_size]
        save_npy_atomic(tmp / L.embedding_shard(s), ds.embeddings(rows))
        shards.append({"file": L.embedding_shard(s), "start": int(a), "rows": int(len(rows))})

    manifest = _bump(m, {"op": "compact", "removed_documents": int(len(deleted)),
                         "removed_passages": int(len(ds) - len(kept_ids))}, new_generation=True)
    manifest.pop("deleted", None)
    counts = np.bincount(domain, minlength=len(m["domains"]))
    words = sum(len(ds.passage(int(i)).split()) for i in kept_ids)
    manifest["counts"] = {
        **m["counts"],
        "documents": int(len(doc_ids)),
        "passages": int(len(kept_ids)),
        "words": int(words),
        "tokens": int(new_off[-1]) if m.get("tokens") else None,
        "text_bytes": int(offsets[-1]),
        "shards": len(shards),
    }
    if m.get("tokens"):
        manifest["tokens"] = {**m["tokens"], "count": int(new_off[-1])}
    manifest["embeddings"] = {**m["embeddings"], "shards": shards}
    manifest["domains"] = [{"name": d["name"], "documents": int(counts[i])} for i, d in enumerate(m["domains"])]
    write_json_atomic(tmp / L.MANIFEST, manifest)
    if (root / L.STATS).exists():
        shutil.copyfile(root / L.STATS, tmp / L.STATS)
    _swap(root, tmp)
    return Datastore.open(root)


def _swap(root: Path, tmp: Path) -> None:
    """Replace `root` by `tmp` (two renames; `recover_swap` finishes an interrupted one)."""
    old = root.with_name(root.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(root, old)
    os.replace(tmp, root)
    shutil.rmtree(old)


def recover_swap(root: str | Path) -> None:
    """If a compaction died between its two renames, put the compacted datastore in place."""
    root = Path(root)
    tmp, old = root.with_name(root.name + ".compact"), root.with_name(root.name + ".old")
    if not root.exists() and tmp.exists() and (tmp / L.MANIFEST).exists() and old.exists():
        os.replace(tmp, root)
        shutil.rmtree(old)
