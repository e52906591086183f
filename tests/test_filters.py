"""No silent loss under filters and routing: a filtered ANN or routed sharded search returns
min(k, allowed) hits, close to exact search over the allowed set; unfiltered results do not change."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from relm.datastore import Datastore
from relm.retrieval.ann import AnnConfig, AnnIndex, build_ann_index
from relm.retrieval.ann_search import filter_plan, search_parameters
from relm.retrieval.ann_tune import recall_at_k
from relm.retrieval.exact import exact_search
from relm.retrieval.sharding import ShardConfig, build_sharded_index
from relm.retrieval.synthetic import clustered_vectors, write_vector_datastore
from relm.retrieval.topk import merge_topk

N, D, NQ, K = 6000, 32, 100, 10


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # deterministic HNSW builds
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    x = np.concatenate(list(clustered_vectors(N + NQ, D, n_clusters=32, seed=3)))
    return x[:N], x[N:].astype(np.float32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("filters") / "ds"
    write_vector_datastore(root, [data[0]], D, shard_rows=2500)
    ds = Datastore.open(root)
    build_ann_index(ds, "hnsw", AnnConfig("HNSW32", ef_search=16), show_progress=False)
    build_ann_index(ds, "ivf", AnnConfig("IVF64,Flat", nprobe=2), show_progress=False)
    build_sharded_index(ds, "km", ShardConfig(by="kmeans", n_shards=8))
    return Datastore.open(root)


def region(x: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """The `fraction` of vectors with the largest projection on a random direction: a filter correlated
    with the space (as a domain or topical date range is), the hard case for a selector."""
    direction = np.random.default_rng(seed).standard_normal(x.shape[1]).astype(np.float32)
    proj = x.astype(np.float32) @ direction
    return proj >= np.quantile(proj, 1 - fraction)


def hits(ids: np.ndarray) -> np.ndarray:
    return (ids >= 0).sum(axis=1)


@pytest.mark.parametrize("name,fraction,exact", [("hnsw", 0.15, False), ("hnsw", 0.02, True),
                                                 ("ivf", 0.5, False), ("ivf", 0.02, False)])
def test_filtered_ann_returns_k_hits(ds, data, name, fraction, exact):
    mask = region(data[0], fraction)
    index = AnnIndex.open(ds, name)
    d = index.defaults
    assert filter_plan(index.structure, d["nprobe"], d["ef_search"], K, int(mask.sum()), N).exact == exact
    s, i = index.search(data[1], K, allowed=mask)
    assert (hits(i) == K).all()  # the old code returned fewer for most queries (HNSW ef 16, IVF nprobe 2)
    assert mask[i].all()
    truth = exact_search(data[1], ds.embedding_shards, K, allowed=mask)[1]
    assert recall_at_k(i, truth, K) >= 0.9


def test_filter_with_fewer_allowed_than_k(ds, data):
    mask = np.zeros(N, bool)
    mask[[5, 500, 4000]] = True
    s, i = AnnIndex.open(ds, "hnsw").search(data[1][:4], K, allowed=mask)
    assert (np.sort(i[:, :3], axis=1) == [5, 500, 4000]).all() and (i[:, 3:] == -1).all()
    assert np.isneginf(s[:, 3:]).all()


@pytest.mark.parametrize("name", ["hnsw", "ivf"])
def test_unfiltered_ann_unchanged(ds, data, name):
    """allowed=None is the faiss search with the stored knobs, as before (no widening, no fallback)."""
    index = AnnIndex.open(ds, name)
    d = index.defaults
    params = search_parameters(index.structure, d["nprobe"], d["ef_search"])
    want_s, want_i = index.index.search(data[1], K, params=params)
    s, i = index.search(data[1], K)
    assert np.array_equal(i, want_i) and np.allclose(s, want_s)


def test_filter_plan():
    hnsw = {"ivf": False, "hnsw": True, "nlist": None}
    ivf = {"ivf": True, "hnsw": False, "nlist": 64}
    flat = {"ivf": False, "hnsw": False, "nlist": None}
    full = filter_plan(hnsw, None, 16, 10, 1000, 1000)
    assert not full.exact and full.ef_search == 16  # nothing filtered out: the unfiltered knobs
    assert filter_plan(hnsw, None, 16, 10, 2500, 10_000).ef_search == 64  # 16 / 0.25
    assert filter_plan(hnsw, None, 8, 10, 5000, 10_000).ef_search == 20  # max(ef, k) / p
    assert not filter_plan(hnsw, None, 16, 10, 2500, 10_000).exact  # 2500 allowed > efSearch' 64
    assert filter_plan(hnsw, None, 16, 10, 400, 10_000).exact  # 400 allowed ≤ efSearch' 400
    assert filter_plan(ivf, 4, 16, 10, 20_000, 100_000).nprobe == 20  # 4 / 0.2
    assert not filter_plan(ivf, 4, 16, 10, 500, 100_000).exact  # IVF: always widened, never exact
    assert filter_plan(ivf, 4, 16, 10, 2000, 100_000).nprobe == 64  # at most nlist
    assert not filter_plan(flat, None, 16, 10, 200, 1000).exact  # Flat scores every allowed vector
    assert filter_plan(hnsw, None, 16, 10, 0, 1000).exact


def test_routed_sharded_filter_returns_k_hits(ds, data):
    """A filter whose passages lie outside a query's nearest shards: the next shards are visited."""
    from relm.retrieval.sharding import ShardedIndex

    index = ShardedIndex.open(ds, "km")
    mask = region(data[0], 0.1, seed=1)
    s, i = index.search(data[1], K, allowed=mask, probe_shards=1)
    assert (hits(i) == K).all()  # the old code: only what the one probed shard held
    assert mask[i].all()
    truth = exact_search(data[1], ds.embedding_shards, K, allowed=mask)[1]
    assert recall_at_k(i, truth, K) >= 0.8


def test_routed_sharded_visits_more_shards_when_short(ds, data):
    """k beyond what the probed shard holds: the next-nearest shards fill the list, in routing order."""
    from relm.retrieval.sharding import ShardedIndex

    index = ShardedIndex.open(ds, "km")
    big = max(index.config["shard_sizes"]) + 50
    i = index.search(data[1][:5], big, probe_shards=1)[1]
    assert (hits(i) == big).all()
    order = index.shard_order(data[1][:5])
    sizes = np.array(index.config["shard_sizes"])
    for q in range(5):  # exact top-big over the shards visited in routing order until they hold `big`
        visited = order[q, : int(np.searchsorted(np.cumsum(sizes[order[q]]), big)) + 1]
        union = np.isin(np.arange(N), np.concatenate([faiss.vector_to_array(index.shards[s].index.id_map)
                                                      for s in visited]))
        want = exact_search(data[1][q : q + 1], ds.embedding_shards, big, allowed=union)[1][0]
        assert np.array_equal(np.sort(i[q]), np.sort(want))


def test_filtered_probe():
    from relm.retrieval.sharding import filtered_probe

    assert filtered_probe(2, 1000, 1000, 8) == 2
    assert filtered_probe(None, 10, 1000, 8) is None
    assert filtered_probe(2, 500, 1000, 8) == 4
    assert filtered_probe(2, 100, 1000, 8) == 8


def test_routed_sharded_unfiltered_unchanged(ds, data):
    from relm.retrieval.sharding import ShardedIndex

    index = ShardedIndex.open(ds, "km")
    route = index.route(data[1], 2)
    want = (np.full((NQ, K), -np.inf, np.float32), np.full((NQ, K), -1, np.int64))
    for q in range(NQ):  # the routed search: only the two nearest shards, merged
        for s in route[q]:
            part = index.shards[s].search(data[1][q : q + 1], K)
            merged = merge_topk((want[0][q : q + 1], want[1][q : q + 1]), part, K)
            want[0][q], want[1][q] = merged[0][0], merged[1][0]
    s, i = index.search(data[1], K, probe_shards=2)
    assert np.array_equal(i, want[1])


def test_sharded_fallback_when_shards_are_approximate(tmp_path, data):
    """HNSW shards with a selective filter: still k hits (exact over the allowed set for short rows)."""
    from relm.retrieval.sharding import ShardedIndex

    root = write_vector_datastore(tmp_path / "ds", [data[0]], D)
    ds = Datastore.open(root)
    build_sharded_index(ds, "hn", ShardConfig(by="kmeans", n_shards=2, factory="HNSW16"))
    mask = region(data[0], 0.03, seed=2)
    i = ShardedIndex.open(Datastore.open(root), "hn").search(data[1], K, allowed=mask)[1]
    assert (hits(i) == K).all() and mask[i].all()


@pytest.mark.parametrize("nq", [3, 40])  # faiss's loop for a few queries, BLAS for more
def test_exact_search_subset_equals_masked_exact(ds, data, nq):
    from relm.retrieval.ann_search import shard_reader
    from relm.retrieval.exact import exact_search_subset

    mask = region(data[0], 0.3)
    want_s, want_i = exact_search(data[1][:nq], ds.embedding_shards, K, allowed=mask)
    s, i = exact_search_subset(data[1][:nq], np.flatnonzero(mask), K, shard_reader(ds.embedding_shards),
                               block_rows=500)
    assert np.array_equal(i, want_i) and np.allclose(s, want_s, atol=1e-6)
    s, i = exact_search_subset(data[1][:nq], np.array([7, 9]), K, shard_reader(ds.embedding_shards))
    assert (np.sort(i[:, :2], axis=1) == [7, 9]).all() and (i[:, 2:] == -1).all()
