"""Updates without retraining: add, delete (tombstones), compact, and interrupted commits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, Datastore, DatastoreError, InputError, build_datastore
from relm.datastore import layout as L
from relm.datastore import update as U
from relm.retrieval.retriever import Retriever

from conftest import corpus_records, make_text, write_jsonl

CONFIG = BuildConfig(chunk=ChunkConfig(max_words=40, min_words=5), shard_size=6)


def new_records(start: int, n: int) -> list[dict]:
    return [
        {"id": f"new-{i}", "text": make_text(100 + i, 70), "domain": "gamma", "timestamp": 1_700_000_000 + i}
        for i in range(start, start + n)
    ]


@pytest.fixture
def ds(tmp_path, encoder):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(n_docs=6))
    return build_datastore([corpus], tmp_path / "ds", CONFIG, encoder=encoder)


def all_texts(ds) -> list[str]:
    return [ds.passage(i) for i in range(len(ds))]


def test_add_appends_without_touching_existing_ids(ds, tmp_path, encoder):
    before_texts, before_vecs = all_texts(ds), ds.embeddings(range(len(ds)))
    n, docs = len(ds), ds.n_documents
    extra = write_jsonl(tmp_path / "extra.jsonl", new_records(0, 3))
    ds2 = U.add_documents(ds, [extra], encoder=encoder)
    assert ds2.generation == 1 and ds2.revision == 1
    assert all_texts(ds2)[:n] == before_texts
    np.testing.assert_array_equal(ds2.embeddings(range(n)), before_vecs)
    assert ds2.n_documents == docs + 3 and ds2.domains == ["alpha", "beta", "gamma"]
    assert ds2.document(docs)["id"] == "new-0" and ds2.doc_domain[docs] == 2
    assert ds2.doc_timestamp[docs] == 1_700_000_000
    # the new passages equal a fresh build of the extra file alone
    fresh = build_datastore([extra], tmp_path / "fresh", CONFIG, encoder=encoder)
    assert all_texts(ds2)[n:] == all_texts(fresh)
    np.testing.assert_allclose(ds2.embeddings(range(n, len(ds2))).astype(np.float32),
                               fresh.embeddings(range(len(fresh))).astype(np.float32), atol=2e-3)
    assert list(ds2.document_passages(docs)) == list(range(n, n + len(fresh.document_passages(0))))
    assert ds2.manifest["counts"]["passages"] == n + len(fresh)
    assert ds2.manifest["counts"]["shards"] == ds.manifest["counts"]["shards"] + fresh.manifest["counts"]["shards"]
    (hits,) = Retriever(ds2).search(ds2.passage(n + 1), k=1)
    assert hits[0].passage_id == n + 1 and hits[0].doc_id.startswith("new-")
    assert not (ds2.root / U.UPDATE_DIR).exists()


def test_add_refuses_live_duplicate_ids(ds, tmp_path, encoder):
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"id": "doc-2", "text": "something else entirely"}])
    with pytest.raises(InputError, match="doc-2.*relm delete"):
        U.add_documents(ds, [clash], encoder=encoder)
    assert Datastore.open(ds.root).revision == 0
    # once deleted, the id may be added again (that is how a document is replaced)
    ds = U.delete_documents(ds, ["doc-2"])
    ds = U.add_documents(ds, [clash], encoder=encoder)
    assert ds.document(ds.n_documents - 1)["id"] == "doc-2"


def test_delete_tombstones_and_no_search_returns_them(ds):
    doomed = ["doc-1", "doc-4"]
    ds2 = U.delete_documents(ds, doomed)
    assert ds2.deleted_documents.tolist() == [1, 4] and ds2.generation == 0 and ds2.revision == 1
    gone = {i for j in (1, 4) for i in ds2.document_passages(j)}
    assert ds2.manifest["deleted"] == {"documents": 2, "passages": len(gone)}
    allowed = ds2.allowed()
    assert allowed is not None and {int(i) for i in np.nonzero(~allowed)[0]} == gone
    for i in sorted(gone):
        hits = Retriever(ds2).search(ds2.passage(i), k=len(ds2))[0]
        assert gone.isdisjoint(h.passage_id for h in hits)
        assert len(hits) == len(ds2) - len(gone)
    with pytest.raises(ConfigError, match="unknown document id.*nothing was deleted"):
        U.delete_documents(ds2, ["doc-0", "nope"])
    assert Datastore.open(ds.root).deleted_documents.tolist() == [1, 4]


def test_time_and_domain_filters(ds):
    ts = ds.doc_timestamp
    cut = int(ts[3])
    before = ds.allowed(before=cut)
    assert set(ds.doc_index[before].tolist()) == {0, 1, 2}
    after = ds.allowed(after=cut)
    assert set(ds.doc_index[after].tolist()) == {3, 4, 5}
    beta = ds.allowed(domains=["beta"])
    assert set(ds.doc_index[beta].tolist()) == {1, 3, 5}
    with pytest.raises(ConfigError, match="unknown domain"):
        ds.allowed(domains=["nope"])
    scores, ids = ds.search_vectors(ds.encode_queries(["whale"]), k=len(ds), allowed=before)
    assert set(ids[0][ids[0] >= 0].tolist()) == set(np.nonzero(before)[0].tolist())


def test_compact_drops_tombstoned_documents(ds):
    ds = U.delete_documents(ds, ["doc-0", "doc-3"])
    live_texts = [t for i, t in enumerate(all_texts(ds)) if ds.allowed()[i]]
    live_vecs = ds.embeddings(np.nonzero(ds.allowed())[0])
    compacted = U.compact(ds)
    assert compacted.generation == 1 and len(compacted.deleted_documents) == 0
    assert all_texts(compacted) == live_texts
    np.testing.assert_array_equal(compacted.embeddings(range(len(compacted))), live_vecs)
    assert [compacted.document(j)["id"] for j in range(compacted.n_documents)] == ["doc-1", "doc-2", "doc-4", "doc-5"]
    assert compacted.manifest["counts"]["passages"] == len(live_texts)
    assert " ".join(compacted.passages(compacted.document_passages(0))).split() == corpus_records(6)[1]["text"].split()
    assert not ds.root.with_name(ds.root.name + ".compact").exists()


def test_interrupted_commit_is_rolled_forward_by_the_next_writer(ds, tmp_path, encoder, monkeypatch):
    from relm.datastore import journal as J

    extra = write_jsonl(tmp_path / "extra.jsonl", new_records(0, 2))
    n = len(ds)

    def crash_after_two_moves(root, journal):
        for src, dst in journal.moves[:2]:
            (root / src).replace(root / dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(J, "_apply", crash_after_two_moves)
    with pytest.raises(KeyboardInterrupt):
        U.add_documents(ds, [extra], encoder=encoder)
    monkeypatch.undo()
    assert json.loads((ds.root / L.MANIFEST).read_text())["counts"]["passages"] == n  # old manifest still in place
    before = sorted(p.relative_to(ds.root).as_posix() for p in ds.root.rglob("*"))
    with pytest.raises(DatastoreError, match="relm recover"):
        Datastore.open(ds.root)  # opening never writes: it says what finishes the update
    assert sorted(p.relative_to(ds.root).as_posix() for p in ds.root.rglob("*")) == before
    assert U.recover(ds.root) == "rolled forward"
    reopened = Datastore.open(ds.root)
    assert len(reopened) > n and reopened.document(reopened.n_documents - 1)["id"] == "new-1"
    assert not (ds.root / U.UPDATE_DIR).exists()
