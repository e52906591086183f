"""`relm search` and the Retriever say what they return and why (issue 12, item 6 and the search defects):
TREC runs from ids only, at passage or document level; hybrid lists that do not depend on k; short BM25
lists, empty results, missing filter fields and off-scale thresholds said, not silent."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, build_datastore
from relm.cli import main
from relm.config import ReaderConfig
from relm.datastore.store import Datastore
from relm.eval import retrieval as R
from relm.retrieval.bm25 import build_bm25_index
from relm.retrieval.options import AdaptiveK, RetrieverConfig, SearchOptions
from relm.retrieval.retriever import Retriever

from conftest import HashEncoder, build_hash_datastore, make_text, write_jsonl


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    ds = build_hash_datastore(tmp_path_factory.mktemp("honest"), n_docs=60)
    build_bm25_index(ds, "bm", show_progress=False)
    return ds


@pytest.fixture
def hash_queries(monkeypatch):
    """Datastores opened by the CLI embed queries with the hash encoder (no model load)."""
    monkeypatch.setattr(Datastore, "encoder", lambda self, config=None: HashEncoder())


def _plain_ds(root, records):
    """A hash-encoded datastore of `records` as given (no timestamps or domains added)."""
    corpus = write_jsonl(root / "corpus.jsonl", records)
    ds = build_datastore([corpus], root / "ds", BuildConfig(chunk=ChunkConfig(max_words=8, min_words=2)),
                         encoder=HashEncoder(), show_progress=False)
    ds._encoder = HashEncoder()
    return ds


# -- TREC runs: ids only, passage or document level ------------------------------------------------------


def test_trec_run_at_passage_and_document_level(ds, hash_queries, tmp_path, capsys):
    queries = write_jsonl(tmp_path / "q.jsonl", [{"_id": "4983", "text": ds.passage(7)},
                                                 {"_id": "12", "text": ds.passage(40)}])
    argv = ["search", str(ds.root), "--queries", str(queries), "-k", "8", "--format", "trec", "--run-name", "t"]
    assert main(argv) == 0
    lines = [x.split() for x in capsys.readouterr().out.splitlines()]
    hits = Retriever(ds).search([ds.passage(7), ds.passage(40)], 8)
    assert [(q, int(p), int(r)) for q, _, p, r, _, _ in lines] == \
        [(q, h.passage_id, r) for q, hs in zip(["4983", "12"], hits, strict=True) for r, h in enumerate(hs, 1)]
    assert float(lines[0][4]) == pytest.approx(hits[0][0].score, abs=1e-5)

    assert main([*argv, "--level", "doc"]) == 0
    doc_lines = [x.split() for x in capsys.readouterr().out.splitlines()]
    scores, ids = Retriever(ds).search_ids([ds.passage(7), ds.passage(40)], 8)
    expected = R.doc_run(ds, ["4983", "12"], scores, ids, "max")  # the eval-retrieval aggregation
    assert {(q, d) for q, _, d, *_ in doc_lines} == {(q, d) for q, docs in expected.items() for d in docs}
    assert doc_lines[0][:4] == ["4983", "Q0", ds.document(int(ds.doc_index[7]))["id"], "1"]  # "d<n>": document ids
    assert all(d.startswith("d") for _, _, d, *_ in doc_lines)
    ranks = [int(r) for q, _, _, r, *_ in doc_lines if q == "4983"]
    assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) < 8  # several passages of one document merged

    assert main([*argv, "--level", "doc", "--doc-agg", "sum"]) == 0
    summed = {d: float(s) for q, _, d, _, s, _ in (x.split() for x in capsys.readouterr().out.splitlines())
              if q == "4983"}
    assert summed == pytest.approx(R.doc_run(ds, ["4983", "12"], scores, ids, "sum")["4983"], abs=1e-5)


def test_trec_run_reads_no_passage_text_or_hit(ds, hash_queries, tmp_path, monkeypatch, capsys):
    def refuse(*a, **kw):
        raise AssertionError("a TREC run must not build hits or read passage text")

    monkeypatch.setattr(Datastore, "hits", refuse)
    monkeypatch.setattr(Datastore, "passage", refuse)
    queries = tmp_path / "q.tsv"
    queries.write_text("a\twhale ship\nb\tkernel memory\n")
    for level in ("passage", "doc"):
        assert main(["search", str(ds.root), "--queries", str(queries), "-k", "5", "--format", "trec",
                     "--level", level]) == 0
        assert len(capsys.readouterr().out.splitlines()) >= 2
    assert main(["search", str(ds.root), "whale ship", "-k", "3", "--format", "trec"]) == 0  # one query too
    assert [x.split()[0] for x in capsys.readouterr().out.splitlines()] == ["1", "1", "1"]


def test_level_doc_needs_trec(ds, capsys):
    assert main(["search", str(ds.root), "whale", "--level", "doc"]) == 2
    assert "--level doc writes a document-level TREC run; add --format trec" in capsys.readouterr().err


# -- hybrid lists do not depend on k ---------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["rrf", "interpolate", "hierarchical"])
def test_hybrid_top_k_is_a_prefix_of_a_longer_list(ds, fusion):
    r = Retriever(ds, RetrieverConfig("hybrid", bm25_index="bm", fusion=fusion, candidates=50))
    texts = [ds.passage(i) for i in (3, 30, 77)] + ["whale ship captain harpoon"]
    s5, i5 = r.search_ids(texts, 5)
    s50, i50 = r.search_ids(texts, 50)
    np.testing.assert_array_equal(i5, i50[:, :5])
    np.testing.assert_allclose(s5, s50[:, :5])
    assert [h.passage_id for h in r.search(texts[0], 5)[0]] == i50[0, :5].tolist()


def test_hybrid_refuses_k_beyond_its_candidates(ds, hash_queries, capsys):
    r = Retriever(ds, RetrieverConfig("hybrid", bm25_index="bm", candidates=20))
    with pytest.raises(ConfigError, match=r"k = 50 exceeds the hybrid's candidates = 20 .*--candidates 50"):
        r.search_ids(["whale"], 50)
    assert main(["search", str(ds.root), "whale", "--retriever", "hybrid", "--bm25-index", "bm", "-k", "200"]) == 2
    assert "pass --candidates 200 or more" in capsys.readouterr().err
    assert main(["search", str(ds.root), "whale", "--retriever", "hybrid", "--bm25-index", "bm", "-k", "200",
                 "--candidates", "200", "--json"]) == 0


def test_eval_refuses_a_hybrid_variant_deeper_than_its_candidates():
    from relm.cli.eval import check_hybrid_depth
    from relm.eval.variants import Variant

    config = RetrieverConfig("exact", bm25_index="bm", candidates=20)
    check_hybrid_depth([Variant("hybrid", k=6, retriever="hybrid"), Variant("massiveds", k=50)], config)
    with pytest.raises(ConfigError, match=r"3 x 7 = 21 hybrid candidates, more than --candidates 20"):
        check_hybrid_depth([Variant("hybrid", k=7, retriever="hybrid")], config)


# -- short and empty lists are said ----------------------------------------------------------------------


def test_bm25_says_when_fewer_passages_match_than_k(ds, caplog):
    r = Retriever(ds, RetrieverConfig("bm25", bm25_index="bm"))
    rare = ds.passage(5).split()[0]  # "<word>5x0": a term of one passage only
    with caplog.at_level(logging.DEBUG, logger="relm"):
        scores, ids = r.search_ids([rare, "whale ship"], 20)
    assert np.count_nonzero(ids[0] != -1) < 20 and np.count_nonzero(ids[1] != -1) == 20
    warnings = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING]
    assert any("bm25: 1 of 2 queries got fewer than k = 20 hits" in w and "share a term with the query" in w
               for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="relm"):
        r.search_ids([rare], 20)  # said once per retriever, then at debug level
    assert not [x for x in caplog.records if x.levelno >= logging.WARNING]
    assert any("fewer than k" in x.getMessage() for x in caplog.records)


def test_no_short_list_warning_when_the_filters_allow_fewer_than_k(ds, caplog):
    r = Retriever(ds, RetrieverConfig())
    with caplog.at_level(logging.WARNING, logger="relm"):
        _, ids = r.search_ids(["whale"], SearchOptions(k=len(ds), domains=("alpha",)))
    assert 0 < np.count_nonzero(ids[0] != -1) < len(ds) and "fewer than k" not in caplog.text


def test_cli_says_short_and_empty_results(ds, hash_queries, tmp_path, capsys):
    rare = ds.passage(5).split()[0]
    assert main(["search", str(ds.root), rare, "--retriever", "bm25", "--index", "bm", "-k", "20", "--json"]) == 0
    assert "fewer than k = 20 hits" in capsys.readouterr().err
    queries = tmp_path / "q.tsv"
    queries.write_text("a\twhale\nb\tzzzunknownterm\n")
    assert main(["search", str(ds.root), "--queries", str(queries), "--retriever", "bm25", "--index", "bm",
                 "--format", "trec"]) == 0
    assert "relm search: 1 of 2 queries have no hits" in capsys.readouterr().err


def test_dates_and_domains_missing_from_the_corpus_are_named(tmp_path, hash_queries, caplog, capsys):
    records = [{"id": f"n{i}", "text": make_text(i, 30)} for i in range(6)]  # no timestamp, no domain field
    ds = _plain_ds(tmp_path, records)
    with caplog.at_level(logging.WARNING, logger="relm"):
        assert Retriever(ds).search(["whale"], 3, before="2020-01-01")[0] == []
    assert "no document has a timestamp" in caplog.text and "--timestamp-field FIELD" in caplog.text
    assert main(["search", str(ds.root), "whale", "--before", "2020-01-01"]) == 0
    err = capsys.readouterr().err
    assert "--timestamp-field" in err and "relm search: no hits" in err
    assert main(["search", str(ds.root), "whale", "--domain", "news"]) == 2
    err = capsys.readouterr().err
    assert "unknown domain(s) ['news']" in err and "no 'domain' field" in err and "--domain-field FIELD" in err


def test_explicit_domains_get_no_missing_field_hint(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": make_text(1, 30)}])
    config = BuildConfig(reader=ReaderConfig(domains=("web",)), chunk=ChunkConfig(max_words=8, min_words=2))
    ds = build_datastore([corpus], tmp_path / "ds", config, encoder=HashEncoder(), show_progress=False)
    with pytest.raises(ConfigError) as e:
        ds.allowed(domains=["news"])
    assert "has ['web']" in str(e.value) and "--domain-field" not in str(e.value)


def test_a_date_bound_says_it_drops_undated_documents(tmp_path, caplog):
    records = [{"id": f"n{i}", "text": make_text(i, 30), **({"timestamp": 1_000 + i} if i % 2 else {})}
               for i in range(6)]
    ds = _plain_ds(tmp_path, records)
    with caplog.at_level(logging.WARNING, logger="relm"):
        hits = Retriever(ds).search(["whale"], 20, after=0)[0]
    assert {h.doc_id for h in hits} == {"n1", "n3", "n5"}
    assert "exclude the 3 of 6 documents that have no timestamp" in caplog.text


# -- thresholds on each retriever's scale ----------------------------------------------------------------


def test_score_scales():
    assert RetrieverConfig().score_scale().maximum == 1.0
    assert RetrieverConfig().score_scale(normalized=False).maximum is None
    assert RetrieverConfig("bm25", bm25_index="b").score_scale().maximum is None
    rrf = RetrieverConfig("hybrid", bm25_index="b").score_scale()
    assert rrf.maximum == pytest.approx(2 / 61) and "1 / (60 + rank)" in rrf.text
    assert RetrieverConfig("hybrid", bm25_index="b", rrf_k=10).score_scale().maximum == pytest.approx(2 / 11)
    assert RetrieverConfig("hybrid", bm25_index="b", fusion="interpolate").score_scale().maximum == 1.0
    assert "cosine" in RetrieverConfig("hybrid", bm25_index="b", fusion="hierarchical").score_scale().text


def test_rrf_scores_stay_within_their_scale(ds):
    r = Retriever(ds, RetrieverConfig("hybrid", bm25_index="bm"))
    scores, ids = r.search_ids([ds.passage(9), "whale ship"], 20)
    assert scores[ids != -1].max() <= 2 / 61 + 1e-7 and scores[0, 0] == pytest.approx(2 / 61)


def test_the_readme_python_example_returns_hits(ds, caplog):
    """README.md's Python example, on a hash-encoded datastore with a hybrid retriever (exact dense + BM25)."""
    r = Retriever(ds, RetrieverConfig("hybrid", bm25_index="bm", fusion="rrf", cache_bytes=64 << 20))
    texts = [ds.passage(i) for i in ds.document_passages(3)][:2]  # document 3 is in domain "alpha"
    opts = SearchOptions(k=10, before="2020-01-01", domains=("alpha",), threshold=0.02,
                         adaptive=AdaptiveK(max_drop=0.005))
    hits = r.search(texts, opts)
    assert all(h and h[0].doc_id == "d3" and all(x.score >= 0.02 for x in h) for h in hits)
    scores, ids = r.search_ids(texts[:1], opts)
    assert ids[0, 0] == hits[0][0].passage_id
    with caplog.at_level(logging.WARNING, logger="relm"):  # the old example's 0.3: nothing, and said why
        assert r.search(texts, SearchOptions(k=10, threshold=0.3)) == [[], []]
    assert "threshold 0.3 is above the highest score a hybrid rrf retriever gives (0.03279)" in caplog.text
    assert "dropped every hit of 2 of 2 queries" in caplog.text


def test_a_threshold_that_empties_a_list_says_so(ds, caplog):
    r = Retriever(ds)
    with caplog.at_level(logging.WARNING, logger="relm"):
        assert r.search(["whale ship"], 5, threshold=0.99) == [[]]
    assert "above the highest" not in caplog.text  # 0.99 is on the cosine scale
    assert "threshold 0.99 dropped every hit of 1 of 1 queries (their best score:" in caplog.text
