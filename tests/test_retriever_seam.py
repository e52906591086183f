"""The retrieval seam: RetrieverConfig / SearchOptions as data, one Retriever for text and vectors, masks and
results cached per revision, thread safety, every kind through the Evaluator, and a reader following
another process's updates."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, build_datastore
from relm.datastore import update as U
from relm.retrieval.bm25 import build_bm25_index
from relm.retrieval.cache import ResultCache
from relm.retrieval.exact import exact_search
from relm.retrieval.options import AdaptiveK, RetrieverConfig, SearchOptions, Subsample
from relm.retrieval.retriever import Retriever, make_retriever
from relm.retrieval.subsample import kept_passages

from conftest import HashEncoder, build_hash_datastore, corpus_records, make_text, write_jsonl


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    ds = build_hash_datastore(tmp_path_factory.mktemp("seam"), n_docs=90)
    build_bm25_index(ds, "bm", show_progress=False)
    return ds


def test_configs_are_data():
    config = RetrieverConfig("hybrid", bm25_index="bm", fusion="interpolate", alpha=0.3, cache_bytes=1 << 20)
    assert RetrieverConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.changed() == {"kind": "hybrid", "bm25_index": "bm", "fusion": "interpolate", "alpha": 0.3,
                                "cache_bytes": 1 << 20}
    assert RetrieverConfig("bm25", index="bm") == RetrieverConfig("bm25", bm25_index="bm")  # one spelling
    assert config.with_kind("exact") == RetrieverConfig(bm25_index="bm", fusion="interpolate", alpha=0.3,
                                                        cache_bytes=1 << 20)
    opts = SearchOptions(k=5, before="1970-01-12", domains="beta", threshold=0.1, adaptive={"max_drop": 0.2},
                         subsample=Subsample(0.5, 3))
    assert opts.before == 11 * 86_400  # epoch seconds
    assert opts.domains == ("beta",) and opts.adaptive == AdaptiveK(max_drop=0.2)
    again = SearchOptions.from_dict(json.loads(json.dumps(opts.to_dict())))
    assert again == opts and hash(again) == hash(opts)
    assert opts.cache_key() == SearchOptions(k=5, before=opts.before, domains=("beta",), subsample=Subsample(0.5, 3))
    for bad, message in [({"kind": "ann"}, "--retriever ann needs --index"),
                         ({"kind": "hybrid"}, "needs --bm25-index"),
                         ({"kind": "exact", "index": "x"}, "takes no --index"),
                         ({"rrf_k": -1}, r"rrf_k \(--rrf-k\) must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            RetrieverConfig(**bad)
    with pytest.raises(ConfigError, match="unknown option"):
        RetrieverConfig.from_dict({"kind": "exact", "magic": 1})
    with pytest.raises(ConfigError, match="subsample fraction"):
        SearchOptions(subsample=Subsample(0.0))
    with pytest.raises(ConfigError, match="not with a sharded index"):
        RetrieverConfig("sharded", index="sh").with_kind("hybrid")


def test_text_and_vector_entry_points_share_the_path(ds):
    r = Retriever(ds)
    queries = [ds.passage(3), "whale ship captain", ds.passage(40)]
    vectors = HashEncoder().encode(queries)
    opts = SearchOptions(k=8, domains=("beta",), threshold=0.05, adaptive=AdaptiveK(max_drop=0.3))
    by_text, by_vector = r.search_ids(queries, opts), r.search_vectors(vectors, opts)
    for a, b in zip(by_text, by_vector, strict=True):
        np.testing.assert_array_equal(a, b)
    assert make_retriever(ds, "exact").search_ids(queries, 8)[1].tolist() == r.search_ids(queries, k=8)[1].tolist()
    # a query given twice is searched once and answered twice
    s, i = r.search_ids([queries[0], queries[1], queries[0]], k=4)
    np.testing.assert_array_equal(i[0], i[2])
    with pytest.raises(ConfigError, match="searches query text, not vectors"):
        Retriever(ds, RetrieverConfig("bm25", bm25_index="bm")).search_vectors(vectors, k=3)
    with pytest.raises(ConfigError, match=r"shape \(1, 5\)"):
        r.search_vectors(np.ones((1, 5), np.float32), k=3)
    with pytest.raises(ConfigError, match="k given twice"):
        r.search_ids("whale", 3, k=4)


def test_subsample_filter_is_a_really_subsampled_datastore(ds):
    q = HashEncoder().encode(["forest wolf", ds.passage(11)])
    kept = kept_passages(len(ds), 0.4, 7)
    ref = exact_search(q, ds.embedding_shards, 6, allowed=kept)
    got = Retriever(ds).search_vectors(q, SearchOptions(k=6, subsample=Subsample(0.4, 7)))
    np.testing.assert_array_equal(got[1], ref[1])
    bm = Retriever(ds, RetrieverConfig("bm25", bm25_index="bm"))
    _, ids = bm.search_ids(["forest wolf"], SearchOptions(k=20, subsample=Subsample(0.4, 7)))
    assert kept[ids[ids >= 0]].all()


def test_masks_are_cached_per_filter_and_revision(tmp_path):
    ds = build_hash_datastore(tmp_path, n_docs=30)
    r = Retriever(ds)
    beta = SearchOptions(k=3, domains=("beta",))
    m1 = r._state.mask(beta)
    assert r._state.mask(SearchOptions(k=9, domains=("beta",), threshold=0.5)) is m1  # same filters
    assert not m1.flags.writeable and r._state.mask(SearchOptions(k=3)) is None  # nothing filtered
    U.delete_documents(ds, ["d1"])
    assert r._state.mask(beta) is m1  # still the old revision until refresh
    assert r.refresh() and not r.refresh()  # moves once
    m2 = r._state.mask(beta)
    assert m2 is not m1 and not m2[list(r.ds.document_passages(1))].any()


def test_result_cache_is_thread_safe():
    cache = ResultCache(max_bytes=8_000)
    n_threads, n_ops = 8, 400
    row = (np.zeros(10, np.float32), np.arange(10))

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        for _ in range(n_ops):
            key = ResultCache.key(f"q{rng.integers(100)}", (10,), 0)
            if cache.get(key) is None:
                cache.put(key, *row)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = cache.stats
    assert st.hits + st.misses == n_threads * n_ops and 0 < st.bytes <= 8_000
    assert st.entries == len(cache._entries) and st.evictions > 0
    hit = cache.get(ResultCache.key(next(iter(cache._entries))[0], (10,), 0))
    with pytest.raises(ValueError):
        hit[1][0] = 5  # cached rows are read-only: a caller cannot corrupt them


def test_concurrent_searches_equal_serial_ones(ds):
    r = Retriever(ds, RetrieverConfig(cache_bytes=1 << 20))
    queries = [ds.passage(i) for i in range(0, 200, 7)]
    serial = [r.search_ids([q], k=5)[1] for q in queries]
    r.cache.clear()
    out: dict[int, np.ndarray] = {}

    def work(t: int) -> None:
        for j in range(t, len(queries), 4):
            out[j] = r.search_ids([queries[j]], SearchOptions(k=5, before=None))[1]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(out[j], serial[j]) for j in range(len(queries)))


@pytest.mark.parametrize("config", [
    RetrieverConfig("ann", index="flat"),
    RetrieverConfig("bm25", bm25_index="bm"),
    RetrieverConfig("hybrid", bm25_index="bm", fusion="hierarchical"),
    RetrieverConfig("sharded", index="sh"),
], ids=lambda c: c.kind)
def test_every_kind_through_the_evaluator(ds, tiny_lm, config):
    from relm.eval.evaluate import Evaluator
    from relm.eval.variants import Variant
    from relm.eval.windows import WindowConfig
    from relm.retrieval.ann import AnnConfig, build_ann_index
    from relm.retrieval.sharding import ShardConfig, build_sharded_index
    from test_eval import docs

    if config.kind == "ann":
        build_ann_index(ds, "flat", AnnConfig("flat"), show_progress=False, overwrite=True)
    if config.kind == "sharded":
        build_sharded_index(ds, "sh", ShardConfig(by="kmeans", n_shards=3, factory="Flat"), overwrite=True)
    variants = [Variant("massiveds", k=2), Variant("last-q", k=2, query="last", query_tokens=8, retriever="exact")]
    res = Evaluator(Retriever(ds, config), tiny_lm, windows=WindowConfig(window=48)).run([("s", docs(2))], variants)
    assert res.settings["retriever"] == config.to_dict() | {"query_truncation": "left"}  # eval queries keep their end
    exact = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48)).run([("s", docs(2))], variants)
    # a variant naming a kind searches with that kind, whatever the Evaluator's retriever
    assert res.runs["last-q"].passages == exact.runs["last-q"].passages
    if config.kind in ("ann", "sharded"):  # flat: exact, so the same passages and numbers
        assert res.runs["massiveds"].passages == exact.runs["massiveds"].passages
        assert res.summary(n_boot=10)["overall"]["massiveds"]["loss"] == \
            exact.summary(n_boot=10)["overall"]["massiveds"]["loss"]
    else:
        assert res.runs["massiveds"].passages != exact.runs["massiveds"].passages


def test_cli_eval_takes_every_retriever_kind_and_saves_its_config(ds, tiny_lm_dir, tmp_path, monkeypatch, capsys):
    from relm.cli import main
    from relm.datastore.store import Datastore

    monkeypatch.setattr(Datastore, "encoder", lambda self: HashEncoder())
    evalf = write_jsonl(tmp_path / "e.jsonl", [{"id": "a", "text": make_text(1, 80)}])
    out = tmp_path / "o"
    assert main(["eval", str(ds.root), str(evalf), "--lm", str(tiny_lm_dir), "--window", "48", "-k", "2",
                 "--retriever", "bm25", "--index", "bm", "--variants", "massiveds,hybrid", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = RetrieverConfig.from_dict(summary["settings"]["retriever"])
    assert config == RetrieverConfig("bm25", bm25_index="bm", query_truncation="left")
    assert summary["variants"]["hybrid"]["retriever"] == "hybrid" and summary["variants"]["massiveds"]["retriever"] is None
    capsys.readouterr()
    assert main(["eval", str(ds.root), str(evalf), "--lm", str(tiny_lm_dir), "--retriever", "sharded"]) == 2
    assert "--retriever sharded needs --index" in capsys.readouterr().err


def _relm(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "relm", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_a_retriever_follows_another_process_s_updates(tmp_path, encoder):
    """One process holds a Retriever; another runs `relm add` and `relm delete`. The first answers from its
    revision until refresh(), then sees the new documents and no longer the deleted ones."""
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(n_docs=6))
    config = BuildConfig(chunk=ChunkConfig(max_words=40, min_words=5), shard_size=6)
    ds = build_datastore([corpus], tmp_path / "ds", config, encoder=encoder, show_progress=False)
    ds._encoder = encoder  # the session's model: refresh() carries it over, nothing is reloaded
    build_bm25_index(ds, "bm", show_progress=False)
    r = Retriever(ds, RetrieverConfig("hybrid", bm25_index="bm", cache_bytes=1 << 20))
    query = "lighthouse keeper rowing through the storm"
    before = r.search(query, k=3)[0]
    assert not any(h.doc_id == "storm" for h in before)

    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "storm", "text": f"{query}. " + make_text(200, 60)}])
    _relm("add", str(ds.root), str(extra), "--no-progress")
    assert r.search(query, k=3)[0] == before  # the old revision, whole (the cache holds it too)
    assert r.refresh() and r.ds.revision == ds.revision + 1 and r.ds._encoder is encoder
    (top, *_), = r.search(query, k=3)
    assert top.doc_id == "storm"

    _relm("delete", str(ds.root), "--doc-id", "storm")
    assert r.search(query, k=3)[0][0].doc_id == "storm"  # still there until the reader refreshes
    assert r.refresh()
    hits = r.search(query, k=len(r.ds))[0]
    assert hits and "storm" not in {h.doc_id for h in hits}
    assert not r.refresh()  # nothing changed since: stays
