"""Partial results (`relm.retrieval.partial`): a search that left a shard out is not cached, and `relm serve`
flags it; nested recordings see the inner block's reports."""

from __future__ import annotations

import numpy as np

from conftest import build_hash_datastore


def test_recordings_nest_and_only_see_their_thread():
    import threading

    from relm.retrieval import partial

    partial.report("nobody is recording: dropped")
    with partial.recording() as outer:
        with partial.recording() as inner:
            partial.report("shard 1 timed out")
        t = threading.Thread(target=partial.report, args=("another thread",))
        t.start()
        t.join()
    assert inner == ["shard 1 timed out"] and outer == ["shard 1 timed out"]


def test_a_partial_answer_is_not_cached_and_serve_flags_it(tmp_path):
    from relm.retrieval import partial
    from relm.retrieval.retriever import Retriever, RetrieverConfig, SearchOptions
    from relm.serve.app import _partial
    from relm.serve.state import HitRows

    ds = build_hash_datastore(tmp_path, n_docs=40)
    r = Retriever(ds, RetrieverConfig("exact", cache_bytes=1 << 20))
    backend = r._state.backend
    whole = backend.search_vectors
    failing = {"on": True}

    def search_vectors(vectors, k, allowed):
        if failing["on"]:
            partial.report("index km shard 2 did not answer within 5 s")
        return whole(vectors, k, allowed)

    backend.search_vectors = search_vectors
    q = ds.embeddings([3, 7]).astype(np.float32)
    with partial.recording() as left_out:
        first = r.search_vectors(q, SearchOptions(k=5))
    assert left_out == ["index km shard 2 did not answer within 5 s"]
    failing["on"] = False
    with partial.recording() as left_out:
        again = r.search_vectors(q, SearchOptions(k=5))  # computed again, not served from the cache
    assert left_out == [] and r.cache.stats.hits == 0
    np.testing.assert_array_equal(first[1], again[1])
    r.search_vectors(q, SearchOptions(k=5))
    assert r.cache.stats.hits == 2  # the whole answer was kept

    assert _partial(HitRows([{"id": 1}], ["index km shard 2 failed"])) == {
        "partial": {"left_out": ["index km shard 2 failed"]}}
    assert _partial(HitRows([{"id": 1}], [])) == {} and _partial([]) == {}
