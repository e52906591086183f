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

from conftest import HashEncoder, build_hash_datastore, corpus_records, make_text, write_jsonl

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
    assert meta["type"] == "bm25" and meta["name"] == "bm25" and meta["config"] == asdict(BM25Config())
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


# -- update after an add: only the new passages tokenized, identical to a full rebuild --------------
BM25S_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
               "params.index.json", "vocab.tokenizer.json", "stopwords.tokenizer.json", "token_ids.npy",
               "token_offsets.npy")
UPDATE_QUERIES = ["whale ship captain", "zebras striped", "kernel socket ships", "quokka", "harpooning islands"]


def added_records(n: int = 12) -> list[dict]:
    """New documents: known words, known stems in new surface forms (ships, harpooning), new terms,
    and a stopwords-only document (a passage of length 0)."""
    extra = ("ships harpooning captains", "zebra striped zebras", "quokka", "islands")
    out = [{"id": f"new-{i}", "text": f"{make_text(400 + i, 20)} {extra[i % 4]} novel{i % 5}word"} for i in range(n)]
    return [*out, {"id": "new-stop", "text": "the and of a an"}]


@pytest.fixture
def hash_ds(tmp_path):
    ds = build_hash_datastore(tmp_path, n_docs=60)
    build_bm25_index(ds, "bm25")
    return ds


def add(ds, tmp_path, records):
    from relm.datastore.update import add_documents

    return add_documents(ds, [write_jsonl(tmp_path / "new.jsonl", records)], encoder=HashEncoder())


def assert_same_as_full_rebuild(ds, name: str) -> None:
    """Index NAME of `ds` equals `build_bm25_index` on `ds` now: every file, array for array, and results."""
    import bm25s

    full = build_bm25_index(ds, "full-rebuild", BM25Index.open(ds, name).config, overwrite=True)
    got, want = ds.root / "indexes" / name, ds.root / "indexes" / "full-rebuild"
    for f in BM25S_FILES:
        if f.endswith(".npy"):
            a, b = np.load(got / f), np.load(want / f)
            assert a.dtype == b.dtype, f
            np.testing.assert_array_equal(a, b, err_msg=f)
        else:
            assert json.loads((got / f).read_text()) == json.loads((want / f).read_text()), f
        assert (got / f).read_bytes() == (want / f).read_bytes(), f
    a = bm25s.BM25.load(str(got), load_corpus=False, show_progress=False)
    b = bm25s.BM25.load(str(want), load_corpus=False, show_progress=False)
    for key in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(a.scores[key], b.scores[key])
    assert a.scores["num_docs"] == b.scores["num_docs"] == len(ds) and a.vocab_dict == b.vocab_dict
    va, vb = (json.loads((d / "vocab.tokenizer.json").read_text()) for d in (got, want))
    for key in ("word_to_stem", "stem_to_sid", "word_to_id"):  # same terms, same ids, same order
        assert list(va[key].items()) == list(vb[key].items()), key
    ga, gb = json.loads((got / "config.json").read_text()), json.loads((want / "config.json").read_text())
    for key in ("config", "vocabulary_size", "counts", "datastore", "probe", "library"):
        assert ga[key] == gb[key], key
    index = BM25Index.open(ds, name)
    assert index.vocabulary_size == full.vocabulary_size
    for k in (3, len(ds)):
        s, i = index.search(UPDATE_QUERIES, k=k)
        fs, fi = full.search(UPDATE_QUERIES, k=k)
        np.testing.assert_array_equal(s, fs)
        np.testing.assert_array_equal(i, fi)


def test_add_updates_bm25_incrementally_identical_to_full_rebuild(hash_ds, tmp_path):
    n_old = len(hash_ds)
    ds = add(hash_ds, tmp_path, added_records())
    meta = json.loads((ds.root / "indexes" / "bm25" / "config.json").read_text())
    assert "load" in meta["stage_seconds"]  # the incremental path, not the fallback
    assert meta["updates"] == [{"added": len(ds) - n_old, "from_passages": n_old}]
    assert meta["counts"]["empty_passages"] == 1  # the stopwords-only document
    assert_same_as_full_rebuild(ds, "bm25")
    vocab = json.loads((ds.root / "indexes" / "bm25" / "vocab.tokenizer.json").read_text())
    assert {"zebra", "quokka", "novel0word"} <= set(vocab["stem_to_sid"])  # new terms got ids
    assert BM25Index.open(ds, "bm25").search("quokka", k=20)[1][0, 0] >= n_old  # and are found
    # a second add continues from the first update's saved ids
    more = [{"id": f"more-{i}", "text": f"quokka zebra {make_text(700 + i, 12)} brandnew{i}"} for i in range(4)]
    ds = add(ds, tmp_path, more)
    meta = json.loads((ds.root / "indexes" / "bm25" / "config.json").read_text())
    assert "load" in meta["stage_seconds"] and len(meta["updates"]) == 2
    assert_same_as_full_rebuild(ds, "bm25")


def test_token_cache_round_trips(hash_ds):
    from relm.retrieval.bm25 import TOKEN_IDS, TOKEN_OFFSETS, _nested_ids

    path = hash_ds.root / "indexes" / "bm25"
    flat, off = np.load(path / TOKEN_IDS), np.load(path / TOKEN_OFFSETS)
    assert flat.dtype == np.uint32 and off.dtype == np.uint64 and off.shape == (len(hash_ds) + 1,)
    index = BM25Index.open(hash_ds, "bm25")
    assert _nested_ids(flat, off, index.vocabulary_size) == index.tokenize(hash_ds.passages(range(len(hash_ds))))


@pytest.mark.parametrize("damage", ["no_saved_ids", "other_library", "bad_offsets", "not_a_prefix"])
def test_bm25_update_falls_back_to_full_rebuild(hash_ds, tmp_path, damage, caplog):
    """An index without usable saved term ids (an index built before they were saved, other library
    versions, damaged files) or whose passages are not a prefix of the datastore's is rebuilt in full."""
    import logging

    from relm.retrieval.bm25 import TOKEN_IDS, TOKEN_OFFSETS, update_bm25_index

    path = hash_ds.root / "indexes" / "bm25"
    cfg = json.loads((path / "config.json").read_text())
    if damage == "no_saved_ids":
        (path / TOKEN_IDS).unlink()
        (path / TOKEN_OFFSETS).unlink()
    elif damage == "other_library":
        cfg["library"]["bm25s"] = "0.0.1"
    elif damage == "bad_offsets":
        np.save(path / TOKEN_OFFSETS, np.load(path / TOKEN_OFFSETS)[:-1])
    else:
        cfg["probe"] = "0" * 16
    (path / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.INFO, logger="relm.retrieval.bm25"):
        if damage == "not_a_prefix":  # the datastore as it is, called directly (its own commit)
            update_bm25_index(hash_ds, "bm25")
            ds = hash_ds
        else:
            ds = add(hash_ds, tmp_path, added_records(5))
    assert "rebuilt in full" in caplog.text
    meta = json.loads((path / "config.json").read_text())
    assert "load" not in meta["stage_seconds"] and "updates" not in meta
    assert (path / TOKEN_IDS).exists() and (path / TOKEN_OFFSETS).exists()  # the next update can continue
    assert_same_as_full_rebuild(ds, "bm25")


def test_cli_bm25_settings_reach_the_index(tmp_path, capsys):
    from relm.cli import main

    from conftest import build_hash_datastore

    ds = build_hash_datastore(tmp_path, n_docs=12)
    assert main(["index", str(ds.root), "--name", "b", "--bm25", "--k1", "0.9", "--b", "0.4",
                 "--stopwords", "none", "--stemmer", "none", "--bm25-method", "robertson"]) == 0
    config = json.loads((ds.root / "indexes" / "b" / "config.json").read_text())["config"]
    assert config == {**config, "k1": 0.9, "b": 0.4, "stopwords": None, "stemmer": None, "method": "robertson"}
    assert main(["index", str(ds.root), "--name", "c", "--bm25", "--b", "2"]) == 2
    assert "b must be a number in [0, 1]" in capsys.readouterr().err
