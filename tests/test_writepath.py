"""The locked, journaled write path: the lock, journal safety, readers across commits, damaged files,
index maintenance (refresh, remove, new domains, tuning kept), and one clear line for bad input."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from relm import Datastore, DatastoreError
from relm.cli import main
from relm.datastore import journal as J
from relm.datastore import layout as L
from relm.datastore import update as U
from relm.datastore.lock import writer_active, writer_lock
from relm.retrieval.ann import AnnConfig, AnnIndex, build_ann_index, tune_ann_index
from relm.retrieval.indexes import list_indexes
from relm.retrieval.maintenance import refresh_indexes, remove_index
from relm.retrieval.retriever import Retriever
from relm.retrieval.sharding import ShardConfig, ShardedIndex, build_sharded_index

from conftest import HashEncoder, build_hash_datastore, make_text, write_jsonl


@pytest.fixture
def hds(tmp_path):
    return build_hash_datastore(tmp_path, n_docs=40)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hold_lock(root: Path, seconds: float) -> subprocess.Popen:
    code = ("import sys, time; from relm.datastore.lock import writer_lock\n"
            f"with writer_lock({str(root)!r}):\n    print('held', flush=True); time.sleep({seconds})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# -- the lock ---------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_with_the_holders_pid_or_waits(hds, capsys):
    holder = _hold_lock(hds.root, 1.5)
    try:
        assert writer_active(hds.root)
        assert main(["delete", str(hds.root), "--doc-id", "d1"]) == 2
        err = capsys.readouterr().err
        assert f"being written by pid {holder.pid}" in err and "--wait" in err and len(err.strip().splitlines()) == 1
        assert Datastore.open(hds.root).revision == hds.revision  # readers take no lock
        t0 = time.monotonic()
        assert main(["delete", str(hds.root), "--doc-id", "d1", "--wait"]) == 0  # queues behind the holder
        assert time.monotonic() - t0 > 0.3
    finally:
        holder.wait(10)
    assert not writer_active(hds.root)
    assert Datastore.open(hds.root).revision == hds.revision + 1
    assert (hds.root / ".lock").read_text() == ""  # released: the holder's pid is gone


def test_concurrent_deletes_lose_no_tombstone(hds):
    procs = [subprocess.Popen([sys.executable, "-m", "relm", "delete", str(hds.root), "--doc-id", f"d{i}",
                               "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    assert all(p.wait(60) == 0 for p in procs), [p.stderr.read() for p in procs]
    ds = Datastore.open(hds.root)
    assert ds.deleted_documents.tolist() == [0, 1, 2, 3] and ds.revision == hds.revision + 4


def test_the_lock_is_reentrant_within_a_process(hds):
    with writer_lock(hds.root), writer_lock(hds.root):
        U.delete_documents(hds, ["d3"])
    assert Datastore.open(hds.root).deleted_documents.tolist() == [3]


# -- the journal --------------------------------------------------------------------------------------
def test_a_journal_pointing_outside_the_datastore_is_refused(hds, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    stage = hds.root / J.STAGE
    stage.mkdir(parents=True)
    (stage / "p").write_text("overwritten")
    for moves, deletes in ([[f"{J.STAGE}/p", "../victim.txt"]], []), ([[f"{J.STAGE}/p", "manifest.json"]], []), \
            ([], ["../victim.txt"]), ([["../victim.txt", "x"]], []):
        (hds.root / J.JOURNAL).write_text(json.dumps({"moves": moves, "deletes": deletes, "manifest": None}))
        before = tree(hds.root)
        assert main(["info", str(hds.root)]) == 2  # opening never writes, never replays
        assert "relm recover" in capsys.readouterr().err and tree(hds.root) == before
        if moves and moves[0][1] == "manifest.json":
            continue  # a move inside the datastore is legitimate
        assert main(["recover", str(hds.root)]) == 2
        assert "refusing" in capsys.readouterr().err
        assert victim.read_text() == "keep me" and tree(hds.root) == before
    (hds.root / J.JOURNAL).write_text("[1, 2]")
    assert main(["recover", str(hds.root)]) == 2 and "not a relm update journal" in capsys.readouterr().err


def test_normal_updates_do_not_claim_a_recovery(hds, tmp_path, caplog):
    extra = write_jsonl(tmp_path / "x.jsonl", [{"id": "x", "text": make_text(77, 30)}])
    with caplog.at_level("INFO", logger="relm"):
        ds = U.add_documents(hds, [extra], encoder=HashEncoder())
        ds = U.delete_documents(ds, ["x"])
    assert "interrupted" not in caplog.text
    assert not (hds.root / J.UPDATE_DIR).exists()
    again = U.delete_documents(ds, ["x"])  # already deleted: nothing changes, no new revision
    assert again.revision == ds.revision


def test_compact_leaves_sibling_directories_alone(hds):
    for sibling in ("ds.old", "ds.compact"):
        (hds.root.parent / sibling).mkdir()
        (hds.root.parent / sibling / "backup.txt").write_text("mine")
    U.delete_documents(hds, ["d1"])
    ds = U.compact(Datastore.open(hds.root))
    assert ds.n_documents == 39
    for sibling in ("ds.old", "ds.compact"):
        assert (hds.root.parent / sibling / "backup.txt").read_text() == "mine"


def test_compacting_a_datastore_whose_every_document_is_deleted_is_refused(tmp_path, capsys):
    ds = build_hash_datastore(tmp_path, n_docs=3)
    build_ann_index(ds, "flat", AnnConfig(factory="flat"))
    ds = U.delete_documents(ds, ["d0", "d1", "d2"])
    before = tree(ds.root)
    assert main(["compact", str(ds.root)]) == 2
    assert "every document" in capsys.readouterr().err and tree(ds.root) == before


# -- readers ------------------------------------------------------------------------------------------
def test_a_reader_keeps_its_revision_across_a_compaction(hds):
    reader = Datastore.open(hds.root)
    reader._encoder = HashEncoder()
    expect = [(reader.passage(i), reader.document(int(reader.doc_index[i]))["id"]) for i in range(len(reader))]
    U.delete_documents(hds, ["d0", "d7"])
    U.compact(Datastore.open(hds.root))
    assert [(reader.passage(i), reader.document(int(reader.doc_index[i]))["id"])
            for i in range(len(reader))] == expect
    hit = Retriever(reader).search(reader.passage(5), k=1)[0][0]
    assert (hit.text, hit.doc_id) == expect[5]
    assert reader.changed()
    new = reader.reopen_if_changed()
    assert new is not reader and new.n_documents == reader.n_documents - 2 and not new.changed()


# -- damaged files --------------------------------------------------------------------------------------
def _damage(ds, how: str) -> None:
    root = ds.root
    m = json.loads((root / L.MANIFEST).read_text())
    if how == "truncated text":
        with open(root / L.PASSAGE_TEXT, "r+b") as f:
            f.truncate(10)
    elif how == "shard missing from the manifest":
        m["embeddings"]["shards"].pop()
    elif how == "tampered counts":
        m["counts"]["passages"] += 3
    elif how == "manifest is a list":
        m = [m]
    elif how == "truncated npy header":
        (root / L.PASSAGE_OFFSETS).write_bytes((root / L.PASSAGE_OFFSETS).read_bytes()[:20])
    elif how == "pickled npy":
        np.save(root / L.DOC_DOMAIN, np.array([object()] * ds.n_documents), allow_pickle=True)
    elif how == "wrong-dimension shard":
        np.save(root / m["embeddings"]["shards"][0]["file"], np.zeros((m["embeddings"]["shards"][0]["rows"], 7),
                                                                     np.float16))
    elif how == "short offsets":
        np.save(root / L.PASSAGE_OFFSETS, np.load(root / L.PASSAGE_OFFSETS)[:-2])
    if how in ("shard missing from the manifest", "tampered counts", "manifest is a list"):
        (root / L.MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("how", ["truncated text", "shard missing from the manifest", "tampered counts",
                                 "manifest is a list", "truncated npy header", "pickled npy",
                                 "wrong-dimension shard", "short offsets"])
def test_damaged_datastores_are_refused_on_open_with_one_line(hds, how, capsys):
    _damage(hds, how)
    with pytest.raises(DatastoreError):
        Datastore.open(hds.root)
    assert main(["info", str(hds.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_an_index_copied_from_another_datastore_is_refused(tmp_path):
    a = build_hash_datastore(tmp_path / "a", n_docs=30)
    records = [{"id": f"d{i}", "text": make_text(500 + i, 24)} for i in range(30)]
    from relm import BuildConfig, ChunkConfig, build_datastore

    b = build_datastore([write_jsonl(tmp_path / "b.jsonl", records)], tmp_path / "b" / "ds",
                        BuildConfig(chunk=ChunkConfig(max_words=8, min_words=2), shard_size=256),
                        encoder=HashEncoder())
    build_ann_index(a, "flat", AnnConfig(factory="flat"))
    if len(a) != len(b):  # same passage count and generation, other vectors
        pytest.skip("the two corpora chunk differently")
    shutil.copytree(a.root / "indexes", b.root / "indexes")
    with pytest.raises(DatastoreError, match="not built from this datastore"):
        AnnIndex.open(b, "flat")


# -- index maintenance --------------------------------------------------------------------------------
def test_add_with_a_new_domain_grows_domain_shards(hds, tmp_path):
    build_sharded_index(hds, "dom", ShardConfig(by="domain"))
    extra = write_jsonl(tmp_path / "x.jsonl", [{"id": "x", "text": make_text(91, 30), "domain": "delta"}])
    ds = U.add_documents(hds, [extra], encoder=HashEncoder())
    index = ShardedIndex.open(ds, "dom")
    assert index.config["shard_names"][-1] == "delta" and len(index.shards) == 4
    last = len(ds) - 1
    assert index.search(ds.embeddings([last]).astype(np.float32), 1)[1][0, 0] == last


def test_an_add_that_an_index_cannot_take_changes_nothing(hds, tmp_path, capsys):
    build_sharded_index(hds, "dom", ShardConfig(by="domain", factory="IVF4,Flat"))
    build_ann_index(hds, "flat", AnnConfig(factory="flat"))
    before = tree(hds.root)
    # one passage of a new domain: too few to train an IVF4 shard for it
    extra = write_jsonl(tmp_path / "x.jsonl", [{"id": "x", "text": make_text(91, 6), "domain": "delta"}])
    import relm.encoders

    original = relm.encoders.load_encoder
    relm.encoders.load_encoder = lambda config=None, **kw: HashEncoder()
    try:
        assert main(["add", str(hds.root), str(extra)]) == 2
    finally:
        relm.encoders.load_encoder = original
    err = capsys.readouterr().err
    assert "index 'dom'" in err and "--remove dom" in err and "nothing was added" in err
    main(["recover", str(hds.root)])
    assert tree(hds.root) == before  # the datastore and the other index untouched


def test_refresh_brings_stale_indexes_up_to_date_and_remove_deletes(hds, tmp_path, capsys):
    build_ann_index(hds, "flat", AnnConfig(factory="flat"))
    old = tmp_path / "old-index"
    shutil.copytree(hds.root / "indexes" / "flat", old)
    extra = write_jsonl(tmp_path / "x.jsonl", [{"id": "x", "text": make_text(91, 30)}])
    ds = U.add_documents(hds, [extra], encoder=HashEncoder())
    shutil.rmtree(ds.root / "indexes" / "flat")
    shutil.copytree(old, ds.root / "indexes" / "flat")  # as an older relm would have left it: stale
    with pytest.raises(DatastoreError, match="--refresh"):
        AnnIndex.open(ds, "flat")
    assert refresh_indexes(ds) == ["flat"]
    index = AnnIndex.open(ds, "flat")
    assert index.ntotal == len(ds) and index.config["updates"][-1]["added"] == len(ds) - len(hds)
    assert main(["index", str(ds.root), "--refresh"]) == 0 and "none" in capsys.readouterr().out
    remove_index(ds, "flat")
    assert list_indexes(ds) == [] and not (ds.root / "indexes" / "flat").exists()
    assert main(["index", str(ds.root), "--remove", "flat"]) == 2 and "no index named" in capsys.readouterr().err


def test_compact_rebuilds_a_tuned_index_tuned(tmp_path):
    ds = build_hash_datastore(tmp_path, n_docs=200)
    build_ann_index(ds, "hnsw", AnnConfig(factory="HNSW16", ef_search=16))
    tune_ann_index(ds, "hnsw", target_recall=0.9, k=5, n_queries=50, seed=3)
    ds = U.delete_documents(ds, ["d3"])
    ds = U.compact(ds)
    config = AnnIndex.open(ds, "hnsw").config
    assert config["datastore"]["passages"] == len(ds)
    assert config["tuning"]["target_recall"] == 0.9 and config["tuning"]["k"] == 5
    assert config["tuning"]["n_queries"] == 50 and config["tuning"]["seed"] == 3
    assert config["search"]["ef_search"] == config["tuning"]["chosen"]["ef_search"]


def test_index_overwrite_keeps_the_old_index_until_the_new_one_is_committed(hds, monkeypatch):
    build_ann_index(hds, "flat", AnnConfig(factory="flat"))
    before = tree(hds.root)
    import relm.retrieval.ann as ann

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ann, "_write_index", boom)
    with pytest.raises(OSError):
        build_ann_index(hds, "flat", AnnConfig(factory="hnsw"), overwrite=True)
    assert tree(hds.root) == before  # the failed rebuild left nothing; the old index serves
    assert AnnIndex.open(hds, "flat").config["factory"] == "Flat"


# -- one clear line -------------------------------------------------------------------------------------
def test_build_output_problems_are_one_line(tmp_path, small_corpus, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["build", str(small_corpus), "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["build", str(small_corpus), "--out", "/proc/relm-cannot-be-here"]) == 2
    assert "cannot create" in capsys.readouterr().err

    import relm.datastore.build as B
    import relm.encoders

    monkeypatch.setattr(relm.encoders, "load_encoder", lambda config=None, **kw: HashEncoder())

    def full(path, array):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(B, "save_npy_atomic", full)
    out = tmp_path / "ds"
    assert main(["build", str(small_corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "rerun the same command" in err and len(err.splitlines()) == 1
    monkeypatch.undo()
    monkeypatch.setattr(relm.encoders, "load_encoder", lambda config=None, **kw: HashEncoder())
    assert main(["build", str(small_corpus), "--out", str(out)]) == 0  # the rerun finishes it


def test_a_stray_staging_directory_does_not_block_a_build(tmp_path, small_corpus, monkeypatch):
    import relm.encoders

    monkeypatch.setattr(relm.encoders, "load_encoder", lambda config=None, **kw: HashEncoder())
    out = tmp_path / "ds"
    (out / L.STAGING).mkdir(parents=True)  # a build killed before it wrote its plan
    assert main(["build", str(small_corpus), "--out", str(out)]) == 0
    assert not (out / L.STAGING).exists() and (out / L.STATS).exists()


def test_a_build_into_a_directory_being_written_is_refused_cleanly(tmp_path, small_corpus, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    holder = _hold_lock(out, 1.0)
    try:
        assert main(["build", str(small_corpus), "--out", str(out)]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no stray .build/
    finally:
        holder.wait(10)


def test_open_waits_for_a_commit_being_applied_and_refuses_an_interrupted_one(hds):
    (hds.root / J.UPDATE_DIR).mkdir()
    (hds.root / J.JOURNAL).write_text(json.dumps({"moves": [], "deletes": [], "manifest": None}))
    holder = _hold_lock(hds.root, 1.0)
    try:
        with pytest.raises(DatastoreError, match="still committing"):
            Datastore.open(hds.root, wait_seconds=0.2)
    finally:
        holder.wait(10)
    with pytest.raises(DatastoreError, match="relm recover"):
        Datastore.open(hds.root)
    assert U.recover(hds.root) == "rolled forward"
    assert Datastore.open(hds.root).revision == hds.revision
