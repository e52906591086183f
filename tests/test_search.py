"""Exact search: top-k primitives and blocked search against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, build_datastore
from relm.retrieval import ResultHeap, exact_search, merge_topk, topk
from relm.retrieval.retriever import Retriever

from conftest import corpus_records


def brute_force(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float32) @ x.astype(np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_topk_matches_argsort():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((7, 500)).astype(np.float32)
    for k in (1, 5, 499, 500):
        got_s, got_i = topk(s, k)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(got_i, order)
        np.testing.assert_array_equal(got_s, np.take_along_axis(s, order, axis=1))


def test_topk_ties_pick_smaller_ids_and_pad():
    s = np.array([[1.0, 3.0, 3.0, 3.0, 0.0, 3.0]], dtype=np.float32)
    got_s, got_i = topk(s, 2)
    assert got_i.tolist() == [[1, 2]] and got_s.tolist() == [[3.0, 3.0]]
    got_s, got_i = topk(s, 8)
    assert got_i.tolist() == [[1, 2, 3, 5, 0, 4, -1, -1]]
    assert np.isneginf(got_s[0, -2:]).all()
    # custom ids (as the blocks of a shard carry)
    _, got_i = topk(s, 3, ids=np.arange(100, 106))
    assert got_i.tolist() == [[101, 102, 103]]


def test_merge_topk_and_padding_never_wins():
    a = (np.array([[0.9, -np.inf]], np.float32), np.array([[4, -1]]))
    b = (np.array([[0.5, 0.1]], np.float32), np.array([[2, 7]]))
    s, i = merge_topk(a, b, 3)
    assert i.tolist() == [[4, 2, 7]] and s[0].tolist() == pytest.approx([0.9, 0.5, 0.1])
    s, i = merge_topk(a, (np.full((1, 1), -np.inf, np.float32), np.array([[-1]])), 3)
    assert i.tolist() == [[4, -1, -1]]


def test_result_heap_equals_one_shot_topk():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((5, 1000)).astype(np.float32)
    heap = ResultHeap(5, 10)
    for b0 in range(0, 1000, 64):
        heap.add(s[:, b0 : b0 + 64], np.arange(b0, min(b0 + 64, 1000)))
    ref_s, ref_i = topk(s, 10)
    np.testing.assert_array_equal(heap.ids, ref_i)
    np.testing.assert_array_equal(heap.scores, ref_s)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_exact_search_over_shards_equals_brute_force(k):
    rng = np.random.default_rng(42)
    d = 48
    x = rng.standard_normal((3000, d)).astype(np.float16)
    q = rng.standard_normal((37, d)).astype(np.float32)
    # uneven shards and blocks that do not divide them
    cuts = [0, 700, 701, 2100, 3000]
    shards = [(a, x[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    got_s, got_i = exact_search(q, shards, k, block_rows=256, query_batch=16)
    ref_s, ref_i = brute_force(q, x, k)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-5)


def test_exact_search_k_larger_than_datastore():
    x = np.eye(3, 4, dtype=np.float16)
    s, i = exact_search(np.ones((1, 4), np.float32), [(0, x)], 5)
    assert i[0, :3].tolist() == [0, 1, 2] and i[0, 3:].tolist() == [-1, -1]


@pytest.fixture(scope="module")
def datastore(tmp_path_factory, encoder):
    from conftest import write_jsonl

    root = tmp_path_factory.mktemp("search")
    corpus = write_jsonl(root / "c.jsonl", corpus_records(n_docs=10))
    config = BuildConfig(chunk=ChunkConfig(max_words=40, min_words=5), shard_size=6)
    return build_datastore([corpus], root / "ds", config, encoder=encoder)


def test_datastore_search_equals_numpy_over_all_vectors(datastore):
    queries = ["whale ship captain", "kernel memory thread", "python module"]
    qv = datastore.encode_queries(queries)
    all_vectors = datastore.embeddings(range(len(datastore)))
    ref_s, ref_i = brute_force(qv, all_vectors, 7)
    got_s, got_i = datastore.search_vectors(qv, 7)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-6)
    hits = Retriever(datastore).search(queries, k=7)
    assert [[h.passage_id for h in row] for row in hits] == ref_i.tolist()


def test_search_hits_carry_text_and_metadata(datastore):
    target = 5
    text = datastore.passage(target)
    (hits,) = Retriever(datastore).search(text, k=3)
    top = hits[0]
    assert top.passage_id == target and top.text == text and top.score > 0.99
    j = int(datastore.doc_index[target])
    assert top.doc_index == j and top.doc_id == f"doc-{j}" and top.title == f"Title {j}"
    assert top.domain == ("alpha", "beta")[j % 2] and top.metadata == {"lang": "en"}
    assert top.timestamp == 1_600_000_000 + 86_400 * j
    d = top.to_dict()
    assert d["timestamp"].endswith("Z") and d["passage_id"] == target
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_bad_arguments(datastore):
    r = Retriever(datastore)
    for k in (0, -3):
        with pytest.raises(ConfigError, match="positive"):
            r.search("whale", k=k)
    with pytest.raises(ConfigError, match="empty query"):
        r.search(["  "])
    with pytest.raises(ConfigError, match="exceeds"):
        r.search("x" * 200_000)
    with pytest.raises(ConfigError, match="dimension"):
        datastore.search_vectors(np.ones((1, 5), np.float32))
    with pytest.raises(IndexError):
        datastore.passage(len(datastore))
