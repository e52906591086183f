"""RETRO neighbour database: same-document exclusion, [N, F] continuations, masking, manifest checks, ANN = exact.

The main datastore (m = 4 tokens, word-level tokenizer) is embedded with a bag-of-words encoder so that
chunk similarity is word overlap and the nearest neighbours are known by construction:

    d0 rep    "A A A"           three identical chunks: each other's exact nearest neighbours (same document)
    d1 echo   "A H"             A, then H (so d1's A has a continuation)
    d2 tail   "F A"             A is the document's last chunk (no continuation)
    d3 short  "forest wolf"     one 2-token chunk (dropped from the datastore stream)
    d4 tech   "P Q"             unrelated words
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, DatastoreError, build_datastore
from relm.retrieval.retriever import Retriever, RetrieverConfig
from relm.retro import neighbours as nb
from relm.retro.neighbours import NeighbourDB, build_neighbours, datastore_stream, full_chunk_ids, text_stream

from conftest import WORDS, HashEncoder, make_text, write_jsonl

M = 4
A = "whale ship captain sea"
H = "harpoon island king princess"
F = "forest wolf grandmother castle"
P, Q = "python kernel memory thread", "process file system network"
DOCS = {"rep": f"{A} {A} {A}", "echo": f"{A} {H}", "tail": f"{F} {A}", "short": "forest wolf", "tech": f"{P} {Q}"}
VOCAB = sorted(set(WORDS))


class BowEncoder:
    """Normalized word counts: cosine = word overlap, whitespace-insensitive, no model load."""

    name = "bow"
    dim = len(VOCAB)

    def encode(self, texts, *, batch_size=64, normalize=True, show_progress=False):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                if w in VOCAB:
                    out[i, VOCAB.index(w)] += 1
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return out

    def identity(self):
        return {"model": self.name, "backend": "test", "dim": self.dim, "pooling": "none",
                "max_seq_length": 0, "fingerprint": "bow-v1"}


def _build(root: Path, records: list[dict], tok_dir: Path, encoder, chunk_tokens: int = M):
    corpus = write_jsonl(root / "corpus.jsonl", records)
    config = BuildConfig(chunk=ChunkConfig(mode="tokens", chunk_tokens=chunk_tokens, tokenizer=str(tok_dir)))
    ds = build_datastore([corpus], root / "ds", config, encoder=encoder, show_progress=False)
    ds._encoder = encoder
    return ds


@pytest.fixture(scope="module")
def ds(tmp_path_factory, word_tokenizer_dir):
    records = [{"id": i, "text": t} for i, t in DOCS.items()]
    return _build(tmp_path_factory.mktemp("bowds"), records, word_tokenizer_dir, BowEncoder())


@pytest.fixture(scope="module")
def hash_ds(tmp_path_factory, word_tokenizer_dir):
    """40 documents of seeded random words (4q + 3 of them: 3-word tails) with hash vectors: no equal chunks,
    so no score ties."""
    rng = np.random.default_rng(0)
    records = [{"id": f"h{i}", "text": " ".join(rng.choice(VOCAB, size=4 * rng.integers(1, 5) + 3))} for i in range(40)]
    return _build(tmp_path_factory.mktemp("hashds"), records, word_tokenizer_dir, HashEncoder())


def doc_of(ds, name: str) -> int:
    return next(j for j in range(ds.n_documents) if ds.document(j)["id"] == name)


def test_datastore_stream_keeps_full_chunks_and_excludes_own_document(ds):
    ids = full_chunk_ids(ds)
    stream, stream_doc = datastore_stream(ds)
    assert len(ds) == 10 and len(ids) == 9  # "forest wolf" (2 tokens) is not a full chunk
    assert stream.shape == (9, M) and stream.dtype == np.int64
    for row, i in enumerate(ids):
        assert np.array_equal(stream[row], ds.chunk_tokens(int(i)))
        assert stream_doc[row] == ds.doc_index[i]


def test_same_document_neighbours_are_excluded(ds, tmp_path):
    stream, stream_doc = datastore_stream(ds)
    rep = doc_of(ds, "rep")
    # without exclusion the rep chunks retrieve each other (identical text, score 1)
    free = build_neighbours(ds, stream, np.full(len(stream), -1), tmp_path / "free", k=2)
    rep_rows = np.flatnonzero(stream_doc == rep)
    assert (ds.doc_index[free.ids[rep_rows]] == rep).all()

    db = build_neighbours(ds, stream, stream_doc, tmp_path / "nb", k=3)
    assert db.k == 3 and db.chunk_size == M and db.neighbour_len == 2 * M and len(db) == len(stream)
    real = db.ids >= 0
    assert real.all()  # 10 chunks, at most 3 excluded: 3 always survive
    assert (ds.doc_index[db.ids] != stream_doc[:, None]).all()
    # the rep chunks' best neighbours are the other documents' copies of A (score 1)
    echo, tail = doc_of(ds, "echo"), doc_of(ds, "tail")
    a_copies = {ds.document_passages(echo)[0], ds.document_passages(tail)[1]}
    for row in rep_rows:
        assert set(db.ids[row, :2].tolist()) == a_copies
        np.testing.assert_allclose(db.scores[row, :2], 1.0, atol=1e-3)
    assert (np.diff(db.scores, axis=1) <= 1e-6).all()  # best first


def test_continuation_is_next_chunk_of_same_document_and_masked_at_document_end(ds, tmp_path):
    stream, stream_doc = datastore_stream(ds)
    db = build_neighbours(ds, stream, stream_doc, tmp_path / "nb", k=len(ds))
    tail_a = ds.document_passages(doc_of(ds, "tail"))[1]
    seen_tail_a = missing_f = 0
    for (u, j), i in np.ndenumerate(db.ids):
        toks, mask = db.neighbours[u, j], db.mask[u, j]
        assert (toks[~mask] == 0).all()  # padding is 0 everywhere
        if i < 0:
            assert not mask.any() and db.scores[u, j] == -np.inf
            continue
        chunk = ds.chunk_tokens(int(i))
        assert np.array_equal(toks[: len(chunk)], chunk) and mask[: len(chunk)].all() and not mask[len(chunk) : M].any()
        if i + 1 < len(ds) and ds.doc_index[i + 1] == ds.doc_index[i]:
            cont = ds.chunk_tokens(int(i) + 1)
            assert np.array_equal(toks[M : M + len(cont)], cont) and mask[M : M + len(cont)].all()
        else:  # last chunk of its document: F stays empty, never another document's chunk
            missing_f += 1
            assert not mask[M:].any() and (toks[M:] == 0).all()
        if i == tail_a:
            seen_tail_a += 1
            assert not mask[M:].any()  # the very next passage (d3's) is another document
    assert seen_tail_a > 0
    assert db.manifest["counts"]["missing_continuations"] == missing_f
    short = ds.document_passages(doc_of(ds, "short"))[0]
    rows = np.nonzero(db.ids == short)
    assert len(rows[0]) and (db.mask[rows][:, :M].sum(axis=1) == 2).all()  # the 2-token chunk


def test_missing_neighbours_when_k_exceeds_candidates(ds, tmp_path):
    stream, stream_doc = datastore_stream(ds)
    db = build_neighbours(ds, stream, stream_doc, tmp_path / "nb", k=len(ds))
    own = np.diff(ds.doc_passages.astype(np.int64))[stream_doc]
    n_real = (db.ids >= 0).sum(axis=1)
    assert np.array_equal(n_real, len(ds) - own)  # every other chunk, then the missing ones
    for u in range(len(db)):
        assert (db.ids[u, n_real[u] :] == -1).all() and (db.ids[u, : n_real[u]] >= 0).all()
        assert not db.mask[u, n_real[u] :].any() and (db.neighbours[u, n_real[u] :] == 0).all()
    assert db.manifest["counts"]["missing_neighbours"] == int((db.ids < 0).sum()) == int(own.sum())


def test_blocks_retries_and_1d_stream_give_the_same_result(ds, tmp_path, monkeypatch):
    stream, stream_doc = datastore_stream(ds)
    ref = build_neighbours(ds, stream, stream_doc, tmp_path / "ref", k=2)
    monkeypatch.setattr(nb, "EXTRA_CANDIDATES", 0)  # first search finds only own-document chunks: retried
    small = build_neighbours(ds, stream, stream_doc, tmp_path / "small", k=2, block=2, show_progress=False)
    flat = build_neighbours(ds, stream.reshape(-1), stream_doc, tmp_path / "flat", k=2)
    # the datastore's own chunks: their stored embeddings serve as the queries, nothing is re-encoded
    stored = build_neighbours(ds, stream, stream_doc, tmp_path / "stored", k=2,
                              query_vectors=ds.embeddings(nb.full_chunk_ids(ds)))
    for db in (small, flat, stored):
        np.testing.assert_allclose(db.scores, ref.scores, atol=1e-6)
        assert np.array_equal(np.sort(db.ids, axis=1), np.sort(ref.ids, axis=1))  # ties may swap order
    assert ref.manifest["stream"]["sha256"] == flat.manifest["stream"]["sha256"]
    got, mask = ref.batch([3, 0])
    assert got.dtype == np.int64 and got.shape == (2, 2, 2 * M)
    assert np.array_equal(got, ref.neighbours[[3, 0]]) and np.array_equal(mask, ref.mask[[3, 0]])


def test_text_stream_excludes_the_indexed_copy_of_an_eval_document(ds, tmp_path):
    docs = [{"id": "echo", "text": DOCS["echo"] + " forest"}, ("new", f"{H} {P} wolf")]
    stream, stream_doc, bounds = text_stream(docs, None, ds)
    assert stream.shape == (4, M) and bounds.tolist() == [0, 2, 4]  # the 1-token tails are dropped
    assert stream_doc.tolist() == [doc_of(ds, "echo")] * 2 + [-1, -1]
    db = build_neighbours(ds, stream, stream_doc, tmp_path / "eval", k=2, description="eval")
    assert (ds.doc_index[db.ids[:2]] != doc_of(ds, "echo")).all()
    # the echo copy's H chunk finds no exact match; the new document's H chunk retrieves echo's
    assert db.scores[1, 0] < 0.99 and db.ids[2, 0] == ds.document_passages(doc_of(ds, "echo"))[1]
    m = db.manifest
    assert m["stream"]["description"] == "eval" and m["search"] == {"type": "exact"}
    assert m["encoder"]["fingerprint"] == "bow-v1" and m["datastore"]["passages"] == len(ds)


def test_ann_flat_index_matches_exact(hash_ds, tmp_path):
    from relm.retrieval.ann import AnnConfig, build_ann_index

    build_ann_index(hash_ds, "flat-idx", AnnConfig("flat"), show_progress=False)
    stream, stream_doc = datastore_stream(hash_ds)
    exact = build_neighbours(hash_ds, stream, stream_doc, tmp_path / "exact", k=3)
    ann = build_neighbours(hash_ds, stream, stream_doc, tmp_path / "ann", k=3,
                           retriever=Retriever(hash_ds, RetrieverConfig("ann", index="flat-idx")))
    assert np.array_equal(ann.ids, exact.ids)
    np.testing.assert_allclose(ann.scores, exact.scores, atol=1e-4)
    assert np.array_equal(ann.neighbours, exact.neighbours)
    assert ann.manifest["search"]["index"] == "flat-idx"
    assert (hash_ds.doc_index[ann.ids] != stream_doc[:, None]).all()


def test_open_checks_the_datastore_and_overwrite(ds, hash_ds, tmp_path):
    stream, stream_doc = datastore_stream(ds)
    out = tmp_path / "nb"
    build_neighbours(ds, stream, stream_doc, out, k=1)
    assert len(NeighbourDB.open(out, ds)) == len(stream)
    with pytest.raises(DatastoreError, match="built for another datastore.*rebuild"):
        NeighbourDB.open(out, hash_ds)
    with pytest.raises(DatastoreError, match="exists; pass overwrite=True"):
        build_neighbours(ds, stream, stream_doc, out, k=1)
    db = build_neighbours(ds, stream, stream_doc, out, k=2, overwrite=True)
    assert db.k == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["nb"]  # no .tmp / .old left
    with pytest.raises(DatastoreError, match="no RETRO neighbour database"):
        NeighbourDB.open(tmp_path / "missing")


def test_errors(ds, tmp_path, word_tokenizer_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from relm.corpus.tokenizer import load_tokenizer

    stream, stream_doc = datastore_stream(ds)
    out = tmp_path / "nb"
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        build_neighbours(ds, stream, stream_doc, out, k=0)
    with pytest.raises(ConfigError, match="empty stream"):
        build_neighbours(ds, np.zeros((0, M), np.int64), np.zeros(0, np.int64), out)
    with pytest.raises(ConfigError, match="stream chunks have 3 tokens.*4-token chunks"):
        build_neighbours(ds, stream[:, :3], stream_doc, out)
    with pytest.raises(ConfigError, match="4-token chunks"):
        text_stream([("x", A)], None, ds, m=3)
    with pytest.raises(ConfigError, match="stream_doc must be"):
        build_neighbours(ds, stream, stream_doc[:-1], out)
    other_dir = tmp_path / "tok2"
    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "whale": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(other_dir))
    with pytest.raises(ConfigError, match="is not the one that chunked.*datastore's tokenizer"):
        build_neighbours(ds, stream, stream_doc, out, tokenizer=load_tokenizer(str(other_dir)))
    with pytest.raises(ConfigError, match="is not the one that chunked"):
        text_stream([("x", A)], str(other_dir), ds)
    with pytest.raises(ConfigError, match="is not the one that embedded"):
        build_neighbours(ds, stream, stream_doc, out, encoder=HashEncoder())
    assert not out.exists() and not (tmp_path / "nb.tmp").exists()
    words = _build_words(tmp_path)
    with pytest.raises(DatastoreError, match="build it with --chunk-tokens 64"):
        datastore_stream(words)
    with pytest.raises(DatastoreError, match="--chunk-tokens 64"):
        build_neighbours(words, stream, stream_doc, out)


def _build_words(root: Path):
    corpus = write_jsonl(root / "words.jsonl", [{"id": "w", "text": make_text(0, 20)}])
    config = BuildConfig(chunk=ChunkConfig(max_words=8, min_words=2))
    ds = build_datastore([corpus], root / "words", config, encoder=HashEncoder(), show_progress=False)
    ds._encoder = HashEncoder()
    return ds


def test_neighbours_and_generation_search_through_a_retriever(ds, hash_ds, tmp_path, word_tokenizer_dir):
    from relm.corpus.tokenizer import load_tokenizer
    from relm.retrieval.bm25 import build_bm25_index

    # generation: a datastore chunk's own text finds that chunk first, with its continuation as F
    tok = load_tokenizer(str(word_tokenizer_dir))
    i = ds.document_passages(doc_of(ds, "tech"))[0]  # P, then Q: no other chunk has its words
    retrieve = nb.generation_retriever(Retriever(ds), tok, 2)
    tokens, mask = retrieve(ds.chunk_tokens(i))
    assert tokens.shape == (2, 2 * M) and tokens.dtype == np.int64
    assert tokens[0, :M].tolist() == ds.chunk_tokens(i).tolist() and tokens[0, M:].tolist() == ds.chunk_tokens(i + 1).tolist()
    assert mask[0].all()
    vecs, found = nb.generation_retriever(Retriever(ds), tok, 2, vectors=True)(ds.chunk_tokens(i))
    assert vecs.shape == (2, ds.dim) and found.all()
    np.testing.assert_allclose(vecs[0], ds.embeddings([i])[0].astype(np.float32))
    # neighbours are searched by vector: a text-only retriever is refused, as is another datastore's
    build_bm25_index(ds, "bm", show_progress=False, overwrite=True)
    stream, stream_doc = datastore_stream(ds)
    with pytest.raises(ConfigError, match="searched by chunk embedding"):
        build_neighbours(ds, stream, stream_doc, tmp_path / "x", retriever=Retriever(ds, RetrieverConfig("bm25", index="bm")))
    with pytest.raises(ConfigError, match="build it on the same datastore"):
        build_neighbours(ds, stream, stream_doc, tmp_path / "x", retriever=Retriever(hash_ds))
