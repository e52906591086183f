"""relm index-eval on faiss, sharded and BM25 indexes, with and without a filter, with held-out text queries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relm.cli import main
from relm.errors import ConfigError
from relm.retrieval.ann import AnnConfig, build_ann_index, tune_ann_index
from relm.retrieval.ann_tune import QuerySet, query_texts
from relm.retrieval.bm25 import BM25Index, build_bm25_index
from relm.retrieval.index_eval import evaluate_index, exact_bm25, hit_scores, recall_with_ties
from relm.retrieval.sharding import ShardConfig, build_sharded_index

from conftest import build_hash_datastore, write_jsonl


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("ieval")
    ds = build_hash_datastore(root, n_docs=200)
    build_sharded_index(ds, "km", ShardConfig(by="kmeans", n_shards=4))
    build_sharded_index(ds, "dom", ShardConfig(by="domain"))
    build_bm25_index(ds, "bm", show_progress=False)
    build_ann_index(ds, "hn", AnnConfig("HNSW32", ef_search=16), show_progress=False)
    ds = type(ds).open(ds.root)
    from conftest import HashEncoder

    ds._encoder = HashEncoder()
    return ds


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Held-out documents (not in the datastore), in the corpus JSONL form."""
    from conftest import make_text

    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    return write_jsonl(path, [{"id": f"h{i}", "text": make_text(1000 + i, 600)} for i in range(6)])


def test_query_texts_cuts_documents_into_passages(heldout):
    texts = query_texts(str(heldout), 1000, seed=0)  # 600 words: passages of 256, 256, 88
    assert len(texts) == 6 * 3 and all(len(t.split()) <= 256 for t in texts)
    assert query_texts(str(heldout), 5, seed=0) == query_texts(str(heldout), 5, seed=0)


def test_sharded_recall_against_exact(ds, heldout):
    full = evaluate_index(ds, "km", queries_file=str(heldout), n_queries=20, n_single=5)
    assert full["recall@10"] == pytest.approx(1.0) and "held-out" in full["queries"]  # Flat shards, all probed
    routed = evaluate_index(ds, "km", queries_file=str(heldout), n_queries=20, n_single=5, probe_shards=1)
    assert routed["recall@10"] < 1.0  # routing to one of 4 shards loses neighbours, and says so
    mask = ds.allowed(domains=("beta",))
    filt = evaluate_index(ds, "km", queries_file=str(heldout), n_queries=20, n_single=5, probe_shards=1, allowed=mask)
    assert filt["allowed"] == int(mask.sum()) < len(ds)
    assert filt["recall@10"] > 0.5


def test_bm25_recall_against_exact_scoring(ds, heldout):
    index = BM25Index.open(ds, "bm")
    texts = query_texts(str(heldout), 10, seed=0)
    exact = exact_bm25(index, texts, 10, None)
    got = index.search(texts, 10)[1]
    full = [hit_scores(s, None) for s in index.score_all(texts)]
    # the same scores at every rank (ids may differ only among passages tied at the 10th score)
    assert all(np.array_equal(f[g], f[e]) for f, g, e in zip(full, got, exact, strict=True))
    assert recall_with_ties(exact[0][::-1][:3], full[0], 3) < 1.0  # the three worst of the top 10 miss
    report = evaluate_index(ds, "bm", queries_file=str(heldout), n_queries=10, n_single=3)
    assert report["recall@10"] == pytest.approx(1.0) and report["matched"] == 1.0
    mask = ds.allowed(after=1_000_150)
    filt = evaluate_index(ds, "bm", queries_file=str(heldout), n_queries=10, n_single=3, allowed=mask)
    assert filt["allowed"] == int(mask.sum()) and filt["recall@10"] == pytest.approx(1.0)
    ids = exact_bm25(index, texts, 10, mask)
    assert mask[ids[ids >= 0]].all()


def test_faiss_filtered_eval_uses_held_out_queries(ds, heldout):
    mask = ds.allowed(after=1_000_190)  # 10 of 200 documents: selective
    report = evaluate_index(ds, "hn", queries_file=str(heldout), n_queries=20, n_single=5, allowed=mask)
    assert report["recall@10"] == pytest.approx(1.0)  # exact over the small allowed set
    with pytest.raises(ConfigError, match="probe-shards"):
        evaluate_index(ds, "hn", probe_shards=2)
    with pytest.raises(ConfigError, match="faiss"):
        evaluate_index(ds, "km", nprobe=4)


def test_tuning_on_held_out_queries(ds, heldout):
    result = tune_ann_index(ds, "hn", target_recall=0.9, k=5, n_queries=20, queries_file=str(heldout))
    assert result["queries_file"] == str(heldout) and "held-out" in result["queries"]
    qs = QuerySet.from_file(ds, str(heldout), 20, 0)
    assert qs.self_ids is None and qs.vectors.shape == (len(qs), ds.dim)


def test_cli_prints_tables(ds, heldout, capsys):
    root = str(ds.root)
    assert main(["index-eval", root, "--name", "km", "--probe-shards", "2", "--n-queries", "20"]) == 0
    out = capsys.readouterr().out
    assert "kmeans partition, 4 shards" in out and "recall@10" in out and "{" not in out
    assert "datastore passages (each without itself)" in out
    assert main(["index-eval", root, "--name", "dom", "--domain", "beta", "--n-queries", "20"]) == 0
    out = capsys.readouterr().out
    assert "filter     --domain beta" in out
    assert main(["index-eval", root, "--name", "bm", "--queries", str(heldout), "--after", "1000150",
                 "--n-queries", "10"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "bm25" in lines[0] and "--after 1000150" in out and "queries with a BM25 hit" in out
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("metric"))):]
    assert len({len(ln) for ln in table}) == 1  # aligned columns
    assert main(["index-eval", root, "--name", "bm", "--n-queries", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["type"] == "bm25" and report["filter"] == "none" and report["recall@1"] == pytest.approx(1.0)
