"""Retrieval evaluation against qrels: document-level runs, trec_eval measures, comparisons, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from relm import ConfigError, InputError
from relm.eval import retrieval as R

from conftest import HashEncoder, build_hash_datastore, write_jsonl


def test_qrels_in_trec_and_beir_form(tmp_path):
    trec = tmp_path / "q.trec"
    trec.write_text("1 0 d3 1\n1 0 d4 0\n2 0 d7 2\n")
    beir = tmp_path / "q.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\n1\td3\t1\n2\td7\t2\n")
    assert R.read_qrels(trec) == {"1": {"d3": 1, "d4": 0}, "2": {"d7": 2}}
    assert R.read_qrels(beir) == {"1": {"d3": 1}, "2": {"d7": 2}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("1 d3\n")
    with pytest.raises(InputError, match=r"bad.tsv:1: expected"):
        R.read_qrels(bad)


def test_passage_hits_become_documents_maxp(tmp_path):
    ds = build_hash_datastore(tmp_path, n_docs=5)  # several 8-word passages per document
    p0 = list(ds.document_passages(0))
    p2 = list(ds.document_passages(2))
    ids = np.array([[p2[1], p0[0], p2[0], -1]])
    scores = np.array([[0.9, 0.8, 0.7, -np.inf]])
    run = R.doc_run(ds, ["q"], scores, ids, "max")
    assert run == {"q": {"d2": 0.9, "d0": 0.8}}  # document ids, not passage numbers; best passage wins
    assert R.doc_run(ds, ["q"], scores, ids, "sum")["q"]["d2"] == pytest.approx(1.6)
    assert list(R.doc_run(ds, ["q"], scores, ids, "first")["q"]) == ["d2", "d0"]


def test_measures_are_trec_eval_s():
    qrels = {"1": {"a": 1, "b": 1}, "2": {"c": 1}}
    run = {"1": {"a": 3.0, "x": 2.0, "b": 1.0}, "2": {"y": 1.0}}
    agg, per = R.evaluate(run, qrels, R.parse_metrics("nDCG@10,MRR@10,MAP,R@2"))
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert per["1"]["nDCG@10"] == pytest.approx(dcg / idcg) and per["2"]["nDCG@10"] == 0.0
    assert per["1"]["RR@10"] == 1.0 and per["1"]["AP"] == pytest.approx((1 + 2 / 3) / 2)
    assert per["1"]["R@2"] == 0.5 and agg["nDCG@10"] == pytest.approx(dcg / idcg / 2)
    with pytest.raises(ConfigError, match="--metrics"):
        R.parse_metrics("nDCG@ten")


def test_paired_bootstrap_sees_a_consistent_gain():
    a, b = np.linspace(0.5, 0.9, 50), np.linspace(0.4, 0.8, 50)
    c = R.paired_bootstrap(a, b, n_boot=2000)
    assert c["mean_diff"] == pytest.approx(0.1) and c["ci_low"] > 0 and c["p"] < 0.01


def test_cli_on_a_beir_style_collection(tmp_path, capsys, monkeypatch):
    import relm.encoders
    from relm.cli import main

    ds = build_hash_datastore(tmp_path, n_docs=30)
    monkeypatch.setattr(relm.encoders, "load_encoder", lambda config=None, **kw: HashEncoder())
    assert main(["index", str(ds.root), "--name", "bm25", "--bm25"]) == 0
    # each query is one passage of a document: exact dense search finds it first (hash vectors)
    queries = [{"_id": str(4000 + j), "text": ds.passage(ds.document_passages(j)[0])} for j in range(10)]
    q = write_jsonl(tmp_path / "queries.jsonl", queries)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{4000 + j}\td{j}\t1\n" for j in range(10)))
    out = tmp_path / "ev"
    assert main(["eval-retrieval", str(ds.root), "--queries", str(q), "--qrels", str(qrels), "-k", "10",
                 "--compare", "exact,bm25,hybrid", "--bm25-index", "bm25", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| exact | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in printed and "bm25 - exact" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["exact"]["nDCG@10"] == 1.0 and summary["judged_queries"] == 10
    assert set(summary["comparisons"]) == {"bm25 - exact", "hybrid - exact"}
    first = (out / "run-exact.trec").read_text().splitlines()[0].split()
    assert first[:4] == ["4000", "Q0", "d0", "1"]
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("query-id\tcorpus-id\tscore\n1\td0\t1\n")
    assert main(["eval-retrieval", str(ds.root), "--queries", str(q), "--qrels", str(wrong)]) == 2
    assert "none of the 10 query ids" in capsys.readouterr().err
