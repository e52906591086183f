"""BM25 index: against a numpy BM25 and raw bm25s, round trip, allowed masks, freshness, bad input."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, DatastoreError, build_datastore
from relm.retrieval import BM25Config, BM25Index, build_bm25_index

from conftest import corpus_records, write_jsonl

HAND_DOCS = [
    # "lighthouse" twice in a short passage, once in a long one: the short one must rank first
    {"id": "light-short", "text": "The lighthouse keeper climbed the lighthouse stairs at dusk."},
    {
        "id": "light-long",
        "text": "Far along the rocky coast, past the fishing village, the church, the market square "
        "and the old Harbour wall, one grey lighthouse stood above the breaking waves.",
    },
    # nothing but stopwords and one-letter words: a passage of length 0
    {"id": "stopwords-only", "text": "a an the of and I s t"},
]
QUERIES = [
    "whale ship captain",
    "kernel memory thread kernel",  # a repeated term counts twice
    "Lighthouses",  # case and stemming
    "harpoon island forest wolf grandmother",
    "python",
]

# -- an independent reference: tokenization and Lucene BM25 in plain Python/numpy -------------------
_WORD = re.compile(r"(?u)\b\w\w+\b")


def ref_tokenize(text: str) -> list[str]:
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    stem = Stemmer.Stemmer("english").stemWord
    stop = set(STOPWORDS_EN)
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in stop]


def ref_bm25(passages: list[str], queries: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """(nq, N) float64 Lucene BM25: sum over query tokens of idf * tf / (tf + k1 (1 - b + b |d| / avgdl))."""
    docs = [Counter(ref_tokenize(p)) for p in passages]
    n = len(docs)
    dl = np.array([sum(c.values()) for c in docs], dtype=np.float64)
    norm = k1 * (1 - b + b * dl / dl.mean())
    df = Counter(t for c in docs for t in c)
    out = np.zeros((len(queries), n))
    for qi, q in enumerate(queries):
        for t in ref_tokenize(q):
            if t in df:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                tf = np.array([c[t] for c in docs], dtype=np.float64)
                out[qi] += idf * tf / (tf + norm)
    return out


def assert_valid_topk(got_s: np.ndarray, got_i: np.ndarray, ref: np.ndarray, k: int, allowed=None) -> None:
    """got is a correct top-k of ref (tie-agnostic): right scores in order, right count, padding after."""
    assert got_s.shape == got_i.shape == (ref.shape[0], k)
    assert got_s.dtype == np.float32 and got_i.dtype == np.int64
    for s, i, r in zip(got_s, got_i, ref, strict=True):
        r = r if allowed is None else np.where(allowed, r, 0.0)
        want = np.sort(r[r > 0])[::-1][:k]
        m = len(want)
        assert (i[:m] >= 0).all() and (i[m:] == -1).all() and np.isneginf(s[m:]).all()
        assert len(set(i[:m].tolist())) == m
        np.testing.assert_allclose(s[:m], want, rtol=1e-5)
        np.testing.assert_allclose(r[i[:m]], s[:m], rtol=1e-5)  # each id carries its own score
        assert (np.diff(s[:m]) <= 0).all()


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def datastore(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("bm25")
    corpus = write_jsonl(root / "c.jsonl", corpus_records(n_docs=8) + HAND_DOCS)
    config = BuildConfig(chunk=ChunkConfig(max_words=40, min_words=5))
    return build_datastore([corpus], root / "ds", config, encoder=encoder)


@pytest.fixture(scope="module")
def index(datastore) -> BM25Index:
    return build_bm25_index(datastore, "bm25")


@pytest.fixture(scope="module")
def passages(datastore) -> list[str]:
    return datastore.passages(range(len(datastore)))


def passage_of(ds, doc_id: str) -> int:
    j = next(j for j in range(ds.n_documents) if ds.document(j)["id"] == doc_id)
    (p,) = ds.document_passages(j)
    return p


# -- scores ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 1000])
def test_matches_numpy_reference(index, passages, k):
    ref = ref_bm25(passages, QUERIES)
    s, i = index.search(QUERIES, k=k)
    assert_valid_topk(s, i, ref, k)


def test_matches_raw_bm25s_exactly(index, passages):
    """The same texts through bm25s by hand, in memory: bit-identical scores, same passages."""
    import bm25s
    import Stemmer
    from bm25s.tokenization import Tokenizer

    tok = Tokenizer(lower=True, stopwords="en", stemmer=Stemmer.Stemmer("english"))
    ids = tok.tokenize(passages, update_vocab=True, return_as="ids", show_progress=False, allow_empty=False)
    raw = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    raw.index((ids, dict(tok.get_vocab_dict())), show_progress=False)
    q_ids = tok.tokenize(QUERIES, update_vocab=False, return_as="ids", show_progress=False, allow_empty=False)
    n = len(passages)
    raw_i, raw_s = raw.retrieve(q_ids, k=n, show_progress=False)
    got_s, got_i = index.search(QUERIES, k=n)
    for rs, ri, gs, gi in zip(raw_s, raw_i, got_s, got_i, strict=True):
        order = np.lexsort((ri, -rs))  # relm's order: (-score, id)
        rs, ri = rs[order], ri[order]
        m = int((rs > 0).sum())
        np.testing.assert_array_equal(gs[:m], rs[:m])
        np.testing.assert_array_equal(gi[:m], ri[:m])
        assert (gi[m:] == -1).all()


def test_hand_checked_ordering_and_padding(datastore, index):
    short, long_ = passage_of(datastore, "light-short"), passage_of(datastore, "light-long")
    s, i = index.search(["lighthouse", "LIGHTHOUSES!", "lighthouse harbour"], k=4)
    assert i[0].tolist() == [short, long_, -1, -1]  # tf 2 in 6 terms beats tf 1 in 19
    assert s[0, 0] > s[0, 1] > 0 and np.isneginf(s[0, 2:]).all()
    np.testing.assert_array_equal(s[1], s[0])
    np.testing.assert_array_equal(i[1], i[0])
    assert i[2, 0] == long_ and i[2, 1] == short  # "harbour" only occurs in the long one
    # stopwords only, unknown words, one-letter words: no known term, so padding rather than an error
    s, i = index.search(["the of and", "zzyzx qwertyuiop", "a b c"], k=3)
    assert (i == -1).all() and np.isneginf(s).all()
    # k beyond the number of passages pads
    n = len(datastore)
    s, i = index.search("lighthouse", k=n + 7)
    assert s.shape == (1, n + 7) and (i[0, 2:] == -1).all()


def test_batches_threads_and_single_queries_agree(index):
    batch = index.search(QUERIES * 3, k=7, n_threads=3)
    single = index.search(QUERIES * 3, k=7, n_threads=1)
    one_by_one = [index.search(q, k=7) for q in QUERIES * 3]
    for a, b in zip(batch, single, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(batch[1], np.concatenate([i for _, i in one_by_one]))
    # a batch mixing queries with and without known terms
    s, i = index.search(["zzyzx", QUERIES[0]], k=7)
    assert (i[0] == -1).all()
    np.testing.assert_array_equal(i[1], batch[1][0])


# -- allowed masks ---------------------------------------------------------------------------------
def test_allowed_mask_is_respected(datastore, index, passages):
    n = len(datastore)
    ref = ref_bm25(passages, QUERIES)
    allowed = np.random.default_rng(0).random(n) < 0.4
    for k in (3, n):  # k = n: more slots than allowed hits, which must stay padding
        s, i = index.search(QUERIES, k=k, allowed=allowed)
        assert allowed[i[i >= 0]].all()
        assert_valid_topk(s, i, ref, k, allowed=allowed)
    # hiding the best passage promotes the next one
    top = index.search("lighthouse", k=1)[1][0, 0]
    mask = np.ones(n, dtype=bool)
    mask[top] = False
    assert index.search("lighthouse", k=1, allowed=mask)[1][0, 0] == passage_of(datastore, "light-long")
    s, i = index.search(QUERIES, k=4, allowed=np.zeros(n, dtype=bool))
    assert (i == -1).all() and np.isneginf(s).all()


# -- artifacts, round trip, freshness -------------------------------------------------------------
def test_saved_index_round_trip(datastore, index):
    path = datastore.root / "indexes" / "bm25"
    meta = json.loads((path / "config.json").read_text())
    assert meta["type"] == "bm25" and meta["name"] == "bm25" and meta["params"] == asdict(BM25Config())
    assert meta["datastore"] == {"passages": len(datastore), "generation": datastore.generation,
                                 "encoder_fingerprint": None, "dim": None}
    assert meta["vocabulary_size"] == index.vocabulary_size > 0 and meta["build_seconds"] > 0
    assert meta["counts"]["empty_passages"] == 1  # the stopwords-only document
    files = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert {"data.csc.index.npy", "vocab.index.json", "params.index.json", "vocab.tokenizer.json"} <= set(files)
    assert files["config.json"] == max(files.values())  # written last
    want = index.search(QUERIES, k=10)
    for mmap in (True, False):
        got = BM25Index.open(datastore, "bm25", mmap=mmap).search(QUERIES, k=10)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_existing_index_needs_overwrite(datastore):
    build_bm25_index(datastore, "again", BM25Config(stemmer=None))
    with pytest.raises(DatastoreError, match="overwrite"):
        build_bm25_index(datastore, "again")
    idx = build_bm25_index(datastore, "again", BM25Config(method="atire", k1=1.2), overwrite=True)
    assert idx.config == BM25Config(method="atire", k1=1.2)
    assert BM25Index.open(datastore, "again").config.method == "atire"


@pytest.mark.parametrize("field,delta", [("passages", 1), ("generation", 1)])
def test_stale_index_is_refused(datastore, field, delta):
    build_bm25_index(datastore, "stale", overwrite=True)
    cfg_path = datastore.root / "indexes" / "stale" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["datastore"][field] -= delta  # as if the datastore had grown since the build
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DatastoreError, match="older than the datastore"):
        BM25Index.open(datastore, "stale")


def test_missing_or_damaged_index(datastore):
    with pytest.raises(DatastoreError, match="no index named 'nope'"):
        BM25Index.open(datastore, "nope")
    build_bm25_index(datastore, "damaged", overwrite=True)
    (datastore.root / "indexes" / "damaged" / "vocab.tokenizer.json").unlink()
    with pytest.raises(DatastoreError, match="damaged"):
        BM25Index.open(datastore, "damaged")


# -- bad input -------------------------------------------------------------------------------------
def test_bad_search_arguments(index):
    n = len(index)
    for q in ("", "   ", [""], ["ok", "\n"], [], [3]):
        with pytest.raises(ConfigError):
            index.search(q)
    for k in (0, -2, True, 2.5):
        with pytest.raises(ConfigError, match="k must"):
            index.search("whale", k=k)
    with pytest.raises(ConfigError, match="n_threads"):
        index.search("whale", n_threads=0)
    for mask in (np.ones(n - 1, dtype=bool), np.ones(n, dtype=np.int64)):
        with pytest.raises(ConfigError, match="boolean mask"):
            index.search("whale", allowed=mask)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"method": "bm25+"}, "not supported"), ({"b": 1.5}, "b must"), ({"k1": -1}, "k1 must"),
     ({"stemmer": ""}, "stemmer must")],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BM25Config(**kwargs)


def test_bad_tokenizer_names_fail_before_building(datastore):
    for cfg, match in ((BM25Config(stemmer="klingon"), "unknown stemmer"), (BM25Config(stopwords="xx"), "stopwords")):
        with pytest.raises(ConfigError, match=match):
            build_bm25_index(datastore, "badname", cfg)
    assert not (datastore.root / "indexes" / "badname").exists()
    with pytest.raises(ConfigError, match="index name"):
        build_bm25_index(datastore, "../escape")
