"""Updating a datastore without retraining: add documents, delete (tombstone) them, compact.

- `add_documents`: the new inputs are built into `DS/.update/new/` with the datastore's own chunker
  and encoder (a normal, resumable build), then merged: passage text and document records are
  appended in place beyond the sizes the manifest records, the index arrays and the new embedding
  shards are staged, every index is brought up to date in staging against a view of the merged
  datastore (`relm.retrieval.maintenance.update_indexes`), and one journaled commit swaps it all in.
  Passage ids of existing passages never change.
- `delete_documents`: tombstones in `deleted.npy` (sorted uint32 document indexes). Nothing else is
  rewritten; every search masks tombstoned passages.
- `compact`: the datastore without its tombstoned documents (ids renumbered) is written into staging,
  every index rebuilt against it there, and one commit swaps it in.

All of it runs under the writer lock and through `relm.datastore.journal`: killed anywhere, the next
command that writes rolls the change back or forward, and readers never see half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import save_npy_atomic
from ..config import ENCODER_BACKENDS, BuildConfig, EncoderConfig, ReaderConfig
from ..corpus.readers import read_documents, resolve_inputs
from ..encoders.compat import recorded_backend
from ..errors import ConfigError, DatastoreError, InputError
from . import journal
from . import layout as L
from .ids import IdRegistry
from .integrity import DELETED
from .lock import writer_lock

log = logging.getLogger(__name__)

UPDATE_DIR = journal.UPDATE_DIR


def _bump(manifest: dict[str, Any], op: dict[str, Any], *, new_generation: bool) -> dict[str, Any]:
    m = dict(manifest)
    m["revision"] = int(m.get("revision", 0)) + 1
    if new_generation:
        m["generation"] = int(m.get("generation", 0)) + 1
    m["updates"] = [*m.get("updates", []), op]
    return m


def _open_for_writing(root: Path, *, keep_new: bool = False):
    """Under the lock: finish or undo an interrupted update, then open the datastore as it is now."""
    from .store import Datastore

    journal.recover(root, keep_new=keep_new)
    return Datastore.open(root)


def recover(root: str | Path, *, wait: bool = False) -> str | None:
    """Finish (roll forward) or undo (roll back) an update that was interrupted; see `journal.recover`."""
    root = Path(root)
    L.read_manifest(root)
    with writer_lock(root, wait=wait):
        return journal.recover(root)


# -- tombstones ---------------------------------------------------------------------------------
def _doc_ids(ds) -> dict[str, int]:
    """id -> document index for every committed document (records beyond the manifest are not read)."""
    return {json.loads(ds.record_bytes(j))["id"]: j for j in range(ds.n_documents)}


def delete_documents(ds, doc_ids: list[str], *, wait: bool = False):
    """Tombstone documents by id. Unknown ids are an error (nothing is changed); deleting only
    documents that are already deleted changes nothing (no new revision)."""
    if not doc_ids:
        raise ConfigError("give at least one --doc-id")
    root = Path(ds.root)
    with writer_lock(root, wait=wait):
        ds = _open_for_writing(root)
        index = _doc_ids(ds)
        unknown = [d for d in doc_ids if d not in index]
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
            raise ConfigError(f"{len(unknown)} unknown document id(s) in {root}: {shown}; nothing was deleted")
        old = ds.deleted_documents
        new = np.union1d(old, np.asarray([index[d] for d in doc_ids], dtype=np.uint32)).astype(np.uint32)
        already = len(old) + len(set(doc_ids)) - len(new)
        if already:
            log.warning("%d of the documents were already deleted", already)
        if len(new) == len(old):
            return ds
        save_npy_atomic(journal.stage_dir(root) / DELETED, new)
        passages = int(np.sum(np.diff(ds.doc_passages.astype(np.int64))[new])) if len(new) else 0
        manifest = _bump(ds.manifest, {"op": "delete", "documents": int(len(new) - len(old))}, new_generation=False)
        manifest["deleted"] = {"documents": int(len(new)), "passages": passages}
        journal.commit_stage(root, manifest=manifest)
        return _reopen(root)


def _reopen(root: Path):
    from .store import Datastore

    return Datastore.open(root)


# -- add ------------------------------------------------------------------------------------------
def add_documents(
    ds,
    inputs: list[str | Path],
    reader: ReaderConfig | None = None,
    *,
    show_progress: bool | None = None,
    encoder=None,
    wait: bool = False,
):
    """Embed new documents with the datastore's own settings and append them, updating every index in
    the same commit. Returns the reopened Datastore."""
    from ..retrieval.maintenance import update_indexes
    from .build import build_datastore
    from .store import Datastore

    root = Path(ds.root)
    with writer_lock(root, wait=wait):
        ds = _open_for_writing(root, keep_new=True)  # an interrupted add's build resumes
        plan_config = BuildConfig.from_dict(ds.manifest["build"]["plan"]["config"])
        config = BuildConfig(
            reader=reader or plan_config.reader,
            chunk=plan_config.chunk,
            # new passages are embedded by the backend that embedded the others (what the manifest records)
            encoder=_recorded_encoder(plan_config.encoder, ds.manifest["encoder"]),
            batch_size=plan_config.batch_size,
            shard_size=plan_config.shard_size,
        )
        _check_new_ids(ds, inputs, config.reader)
        new = build_datastore(inputs, root / journal.NEW, config, show_progress=show_progress, encoder=encoder,
                              replace_other=True)
        if new.manifest["encoder"]["fingerprint"] != ds.manifest["encoder"]["fingerprint"] or \
                recorded_backend(new.manifest["encoder"]) != recorded_backend(ds.manifest["encoder"]):
            raise DatastoreError("the encoder changed since the datastore was built; rebuild it instead of adding")
        if (ds.manifest.get("tokens") or {}).get("tokenizer") != (new.manifest.get("tokens") or {}).get("tokenizer"):
            raise DatastoreError("the tokenizer changed since the datastore was built; rebuild it instead of adding")
        manifest = _merge(ds, new)
        stage = journal.stage_dir(root)
        files = {rel: stage / rel for rel in journal.staged_files(root)}
        view = Datastore.view(root, manifest, files=files, index_root=stage / "indexes")
        update_indexes(ds, view)
        journal.commit_stage(root, manifest=manifest)
    return _reopen(root)


def _recorded_encoder(config: EncoderConfig, recorded: dict[str, Any]) -> EncoderConfig:
    """The plan's encoder config with the backend the manifest records (a test encoder's: left as planned)."""
    backend = recorded_backend(recorded)
    return replace(config, backend=backend) if backend in ENCODER_BACKENDS else config


def _check_new_ids(ds, inputs, reader: ReaderConfig) -> None:
    """New document ids must not clash with live documents (ids of deleted documents may be reused)."""
    deleted = set(ds.deleted_documents.tolist())
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


def _merge(ds, new) -> dict[str, Any]:
    """Append `new` (a datastore of the new documents) to `ds`: text and records in place beyond the
    committed sizes, everything else staged. Returns the merged manifest (not yet committed)."""
    root, m, nm = ds.root, ds.manifest, new.manifest
    stage = journal.stage_dir(root)
    n, n_docs = len(ds), ds.n_documents
    text_bytes = int(m["counts"]["text_bytes"])
    record_bytes = int(ds.record_offsets[-1])

    def stage_array(rel: str, array: np.ndarray) -> None:
        save_npy_atomic(stage / rel, array)

    # text and records: appended in place beyond the sizes the manifest records
    _append_in_place(root / L.PASSAGE_TEXT, text_bytes, new.root / L.PASSAGE_TEXT)
    _append_in_place(root / L.DOC_RECORDS, record_bytes, new.root / L.DOC_RECORDS)
    shift = lambda a, by: (np.asarray(a).astype(np.uint64) + np.uint64(by))  # noqa: E731
    stage_array(L.PASSAGE_OFFSETS, np.concatenate([ds.passage_offsets[:-1], shift(new.passage_offsets, text_bytes)]))
    stage_array(L.PASSAGE_DOC, np.concatenate([ds.doc_index, (new.doc_index + n_docs).astype(np.uint32)]))
    stage_array(L.DOC_OFFSETS, np.concatenate([ds.record_offsets[:-1], shift(new.record_offsets, record_bytes)]))
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
        ids, off = ds.token_arrays
        new_ids, new_off = new.token_arrays
        stage_array(L.TOKEN_IDS, np.concatenate([ids, new_ids]))
        stage_array(L.TOKEN_OFFSETS, np.concatenate([off[:-1], shift(new_off, len(ids))]))
    shards = list(m["embeddings"]["shards"])
    for s in nm["embeddings"]["shards"]:
        rel = L.embedding_shard(len(shards))
        _link_or_copy(new.root / s["file"], stage / rel)  # a link: new/ stays intact for a retry, at no cost
        shards.append({"file": rel, "start": n + s["start"], "rows": s["rows"]})

    op = {"op": "add", "inputs": [i["path"] for i in nm["inputs"]], "documents": new.n_documents,
          "passages": len(new)}
    if nm["build"].get("encoder_input") is not None:
        op["encoder_input"] = nm["build"]["encoder_input"]
    manifest = _bump(m, op, new_generation=True)
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
    return manifest


def _link_or_copy(src: Path, dst: Path) -> None:
    """dst as a hard link to src (files are never rewritten in place, so sharing the inode is safe)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# -- compact --------------------------------------------------------------------------------------
def compact(ds, *, wait: bool = False):
    """Rewrite the datastore without tombstoned documents (passage and document ids are renumbered),
    rebuilding every index in the same commit. Returns the reopened Datastore."""
    from ..retrieval.indexes import list_indexes
    from ..retrieval.maintenance import rebuild_index
    from .store import Datastore

    root = Path(ds.root)
    with writer_lock(root, wait=wait):
        ds = _open_for_writing(root)
        deleted = ds.deleted_documents
        if len(deleted) == 0:
            log.info("%s has no deleted documents; nothing to compact", root)
            return ds
        if len(deleted) == ds.n_documents:
            raise ConfigError(
                f"every document of {root} is deleted; compacting would leave an empty datastore whose indexes "
                "cannot be built. Add documents first, or build a new datastore"
            )
        stage = journal.stage_dir(root)
        manifest = _assemble_compacted(ds, stage, deleted)
        files = {rel: stage / rel for rel in journal.staged_files(root)}
        files[DELETED] = stage / DELETED  # absent: the compacted datastore has no tombstones
        view = Datastore.view(root, manifest, files=files, index_root=stage / "indexes")
        for config in list_indexes(ds):
            rebuild_index(view, config)
        kept = {s["file"] for s in manifest["embeddings"]["shards"]}
        deletes = [DELETED] + [s["file"] for s in ds.manifest["embeddings"]["shards"] if s["file"] not in kept]
        journal.commit_stage(root, manifest=manifest, deletes=deletes)
    return _reopen(root)


def _assemble_compacted(ds, out: Path, deleted: np.ndarray) -> dict[str, Any]:
    """Write the datastore without the tombstoned documents under `out`; returns its manifest."""
    from .assemble import Segment, assemble

    live = np.setdiff1d(np.arange(ds.n_documents, dtype=np.int64), deleted.astype(np.int64))
    meta = ds.meta
    new = assemble(out, [Segment(ds, live)], shard_size=int(meta.build["plan"]["config"]["shard_size"]),
                   build=meta.build, inputs=meta.inputs)
    op = {"op": "compact", "removed_documents": int(len(deleted)), "removed_passages": int(len(ds) - new.counts.passages)}
    return meta.bump(op, new_generation=True, counts=new.counts, shards=new.shards, domains=new.domains,
                     tokens=new.tokens, deleted=None).to_json()
