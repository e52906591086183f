"""Retriever API, fusion, thresholds, adaptive k, cache and sharded search, on hash-encoded datastores."""

from __future__ import annotations

import numpy as np
import pytest

from relm import ConfigError
from relm.datastore import update as U
from relm.retrieval.cache import ResultCache
from relm.retrieval.exact import exact_search
from relm.retrieval.fusion import adaptive_k, interpolate, minmax, rescore, rrf, threshold
from relm.retrieval.retriever import Retriever, RetrieverConfig, make_retriever
from relm.retrieval.sharding import ShardConfig, ShardedIndex, build_sharded_index, hamming_order, lsh_codes

from conftest import HashEncoder, build_hash_datastore


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return build_hash_datastore(tmp_path_factory.mktemp("hashds"))


def run(scores, ids):
    return np.asarray(scores, np.float32), np.asarray(ids, np.int64)


def test_rrf_matches_the_formula():
    a = run([[0.9, 0.8, 0.1]], [[1, 2, 3]])
    b = run([[5.0, 4.0, -np.inf]], [[3, 1, -1]])
    s, i = rrf([a, b], k=4, rrf_k=60)
    expected = {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61}
    order = sorted(expected, key=lambda d: -expected[d])
    assert i[0, :3].tolist() == order and i[0, 3] == -1
    np.testing.assert_allclose(s[0, :3], [expected[d] for d in order], rtol=1e-6)


def test_interpolation_and_minmax():
    dense = run([[0.9, 0.5, 0.1]], [[1, 2, 3]])
    sparse = run([[10.0, 2.0, -np.inf]], [[2, 4, -1]])
    np.testing.assert_allclose(minmax(dense[0]), [[1.0, 0.5, 0.0]], rtol=1e-6)
    s, i = interpolate(dense, sparse, k=4, alpha=0.5)
    # 1: .5*1 = .5; 2: .5*.5 + .5*1 = .75; 3: 0; 4: .5*0 = 0
    assert i[0, :2].tolist() == [2, 1]
    np.testing.assert_allclose(s[0, :2], [0.75, 0.5], rtol=1e-6)
    with pytest.raises(ValueError):
        interpolate(dense, sparse, k=2, alpha=1.5)


def test_threshold_and_adaptive_k():
    r = run([[0.9, 0.85, 0.3, 0.25]], [[4, 5, 6, 7]])
    s, i = threshold(r, 0.5)
    assert i.tolist() == [[4, 5, -1, -1]] and np.isneginf(s[0, 2:]).all()
    s, i = adaptive_k(r, max_drop=0.2)
    assert i.tolist() == [[4, 5, -1, -1]]  # the big gap (0.85 -> 0.3) ends the list
    s, i = adaptive_k(r, max_ratio=0.95)
    assert i.tolist() == [[4, -1, -1, -1]]
    s, i = adaptive_k(r, max_ratio=0.99, min_k=3)
    assert i.tolist() == [[4, 5, 6, -1]]


def test_rescore_is_exact_inner_product():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)).astype(np.float16)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    cand = np.array([[3, 7, 9, -1], [1, 2, 3, 4]])
    s, i = rescore(q, cand, lambda ids: table[ids], k=3)
    for row in range(2):
        c = cand[row][cand[row] >= 0]
        ref = q[row] @ table[c].astype(np.float32).T
        order = np.argsort(-ref, kind="stable")[:3]
        assert i[row].tolist() == c[order].tolist()
        np.testing.assert_allclose(s[row], ref[order], rtol=1e-5)


def test_exact_retriever_equals_datastore_search(ds):
    r = Retriever(ds)
    queries = [ds.passage(3), ds.passage(100), "forest wolf grandmother"]
    s, i = r.search_ids(queries, k=5)
    ref = exact_search(HashEncoder().encode(queries), ds.embedding_shards, 5)
    np.testing.assert_array_equal(i, ref[1])
    assert i[0, 0] == 3 and i[1, 0] == 100  # each passage finds itself first
    hits = r.search(queries[:1], k=2)[0]
    assert hits[0].passage_id == 3 and hits[0].doc_id == ds.document(int(ds.doc_index[3]))["id"]


def test_filters_threshold_and_bad_arguments(ds):
    r = Retriever(ds)
    cut = int(ds.doc_timestamp[150])
    s, i = r.search_ids(["whale"], k=50, before=cut)
    assert (ds.doc_timestamp[ds.doc_index[i[0][i[0] >= 0]]] < cut).all()
    s, i = r.search_ids(["whale"], k=50, domains=["beta"])
    assert {ds.domains[ds.doc_domain[ds.doc_index[j]]] for j in i[0]} == {"beta"}
    s, i = r.search_ids(["whale"], k=50, threshold=0.3)
    assert (s[i >= 0] >= 0.3).all() and (i == -1).any()
    for bad in ({"k": 0}, {"k": -1}):
        with pytest.raises(ConfigError, match="positive"):
            r.search_ids(["x"], **bad)
    with pytest.raises(ConfigError, match="empty query"):
        r.search_ids([""], k=1)
    with pytest.raises(ConfigError, match="unknown retriever"):
        make_retriever(ds, "magic")
    with pytest.raises(ConfigError, match="--index"):
        make_retriever(ds, "ann")


def test_cache_hits_bounds_and_invalidation(tmp_path):
    c = ResultCache(max_bytes=2000)
    key = ResultCache.key("Hello World", ("exact", 10), 0)
    # exact keys: a cased encoder embeds these differently, so none may answer for another
    assert key != ResultCache.key("hello world", ("exact", 10), 0) != ResultCache.key("Hello  World", ("exact", 10), 0)
    assert c.get(key) is None
    c.put(key, np.zeros(10, np.float32), np.arange(10))
    assert c.get(key)[1].tolist() == list(range(10))
    assert c.stats.hits == 1 and c.stats.misses == 1 and c.stats.hit_rate == 0.5
    for n in range(50):
        c.put(ResultCache.key(f"q{n}", ("exact", 10), 0), np.zeros(10, np.float32), np.arange(10))
    assert c.stats.bytes <= 2000 and c.stats.evictions > 0 and c.get(key) is None  # LRU evicted the oldest

    ds = build_hash_datastore(tmp_path, n_docs=40)
    r = Retriever(ds, RetrieverConfig(cache_bytes=1 << 20))
    first = r.search_ids(["kernel memory", "whale ship"], k=5)
    again = r.search_ids(["kernel memory", "whale ship"], k=5)
    assert r.cache.stats.hits == 2 and r.cache.stats.misses == 2
    np.testing.assert_array_equal(first[1], again[1])
    r.search_ids(["Kernel  MEMORY"], k=5)  # another text: searched, not served from the cache
    assert r.cache.stats.hits == 2 and r.cache.stats.misses == 3
    # an update bumps the revision: the cached answer (which holds the deleted passage) is not reused
    top_doc = ds.document(int(ds.doc_index[first[1][0, 0]]))["id"]
    U.delete_documents(ds, [top_doc])
    assert r.refresh() and r.ds.revision == ds.revision + 1
    s, i = r.search_ids(["kernel memory"], k=5)
    assert first[1][0, 0] not in i[0] and r.cache.stats.misses == 4
    assert r.cache.stats.entries == 1  # the old revision's entries were dropped


@pytest.mark.parametrize("by, n_shards", [("kmeans", 4), ("lsh", 4), ("domain", 0)])
def test_flat_sharded_search_equals_unsharded(ds, by, n_shards):
    name = f"sh-{by}"
    index = build_sharded_index(ds, name, ShardConfig(by=by, n_shards=n_shards or 1, factory="Flat"), overwrite=True)
    assert sum(index.config["shard_sizes"]) == len(ds)
    if by == "domain":
        assert index.config["shard_names"] == ["alpha", "beta", "gamma"]
    q = HashEncoder().encode(["forest wolf", ds.passage(7), "ship captain sea"])
    ref_s, ref_i = exact_search(q, ds.embedding_shards, 10)
    got_s, got_i = ShardedIndex.open(ds, name).search(q, 10)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-4, atol=1e-5)
    r = make_retriever(ds, "sharded", index=name)
    assert r.search_ids(["forest wolf"], k=10)[1][0].tolist() == ref_i[0].tolist()
    if by != "domain":
        # routed to the nearest shards only: a subset of the shards, results drawn from them
        routed = ShardedIndex.open(ds, name).search(q, 10, probe_shards=1)[1]
        assert (routed[:, 0] >= 0).all()


def test_sharded_routing_helpers():
    planes = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    codes = lsh_codes(np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0]], np.float32), planes)
    assert codes.tolist() == [3, 2, 0]
    order = hamming_order(np.array([0]), 2)
    assert order[0, 0] == 0 and order[0, -1] == 3


def test_sharded_index_respects_tombstones_and_updates(tmp_path):
    ds = build_hash_datastore(tmp_path, n_docs=60)
    build_sharded_index(ds, "sh", ShardConfig(by="kmeans", n_shards=3))
    ds = U.delete_documents(ds, ["d5"])
    ds._encoder = HashEncoder()
    gone = set(ds.document_passages(5))
    s, i = make_retriever(ds, "sharded", index="sh").search_ids([ds.passage(min(gone))], k=len(ds))
    assert gone.isdisjoint(i[0].tolist())
    # adding documents updates the index in the same commit
    from conftest import make_text, write_jsonl

    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "new", "text": make_text(999, 24)}])
    ds = U.add_documents(ds, [extra], encoder=HashEncoder())
    ds._encoder = HashEncoder()
    index = ShardedIndex.open(ds, "sh")
    q = HashEncoder().encode([ds.passage(len(ds) - 1)])
    assert index.search(q, 1)[1][0, 0] == len(ds) - 1


def test_a_filter_that_excludes_everything_says_why(tmp_path, caplog):
    from relm.corpus.documents import NO_TIMESTAMP
    from relm.retrieval.retriever import Retriever, RetrieverConfig

    from conftest import HashEncoder, build_hash_datastore

    ds = build_hash_datastore(tmp_path, n_docs=10)  # timestamps 1,000,000 + i
    r = Retriever(ds, RetrieverConfig())
    ds._encoder = HashEncoder()
    with caplog.at_level("WARNING", logger="relm"):
        assert r.search(["x"], 3, before=10)[0] == []
    assert "exclude every passage" in caplog.text and "in the --before/--after range (10 dated" in caplog.text
    assert NO_TIMESTAMP not in set(ds.doc_timestamp.tolist())


def test_repeats_within_one_batch_count_as_cache_hits(tmp_path):
    from relm.retrieval.retriever import Retriever, RetrieverConfig

    from conftest import build_hash_datastore

    r = Retriever(build_hash_datastore(tmp_path, n_docs=10), RetrieverConfig(cache_bytes=1 << 20))
    first = r.search(["a", "b", "a", "a"], 3)
    assert (r.cache.stats.hits, r.cache.stats.misses) == (2, 2)  # the two repeats of "a" are hits
    assert first[0] == first[2] == first[3]
    r.search(["a", "c"], 3)
    assert (r.cache.stats.hits, r.cache.stats.misses) == (3, 3)
