"""The command line, run in-process through `main(argv)`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from relm.cli import main, make_parser

from conftest import corpus_records, write_jsonl


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(n_docs=8))
    out = root / "ds"
    assert main(["-q", "build", str(corpus), "--out", str(out), "--chunk-words", "50", "--min-words", "5",
                 "--shard-size", "8", "--no-progress"]) == 0
    return root, out


def test_help_for_every_subcommand(capsys):
    parser = make_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"build", "info", "search"} <= set(commands)
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "(default: 256)" in capsys.readouterr().out
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"relm {name}" in out and "(default: None)" not in out


def test_build_prints_summary_and_info(built, capsys):
    root, out = built
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "documents   8" in text and "all-MiniLM-L6-v2" in text and "alpha" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["documents"] == 8 and info["encoder"]["dim"] == 384
    assert info["chunker"]["max_words"] == 50


def test_search_single_query_text_and_json(built, capsys):
    _, out = built
    assert main(["search", str(out), "whale ship captain", "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(" 1. ") and " 3. " in text and "doc-" in text
    assert main(["search", str(out), "whale ship captain", "-k", "3", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["query"] == "whale ship captain" and len(row["hits"]) == 3
    assert {"passage_id", "score", "text", "doc_id", "domain", "metadata"} <= set(row["hits"][0])


def test_search_batch_jsonl_tsv_and_trec(built, capsys):
    root, out = built
    qfile = write_jsonl(root / "q.jsonl", [{"id": "q1", "query": "kernel memory"}, {"id": "q2", "text": "forest wolf"}])
    results = root / "run.jsonl"
    assert main(["search", str(out), "--queries", str(qfile), "-k", "4", "-o", str(results)]) == 0
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2"] and all(len(r["hits"]) == 4 for r in rows)

    tsv = root / "q.tsv"
    tsv.write_text("a\tkernel memory\nb\tforest wolf\n")
    assert main(["search", str(out), "--queries", str(tsv), "-k", "2", "--format", "trec", "--run-name", "t"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    qid, q0, pid, rank, score, tag = lines[0].split()
    assert (qid, q0, rank, tag) == ("a", "Q0", "1", "t") and int(pid) == rows[0]["hits"][0]["passage_id"]
    assert float(score) == pytest.approx(rows[0]["hits"][0]["score"], abs=1e-5)

    plain = root / "q.txt"
    plain.write_text("kernel memory\n\nforest wolf\n")
    assert main(["search", str(out), "--queries", str(plain), "-k", "1"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == ["1", "3"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "/no/such/file.jsonl", "--out", "X"], "/no/such/file.jsonl: no such file or directory"),
        (["info", "/no/such/ds"], "no such datastore"),
        (["search", "DS", "q", "-k", "0"], "positive"),
        (["search", "DS"], "either a QUERY or --queries"),
        (["build", "IN", "--out", "X", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["build", "IN", "--out", "X", "--chunk-words", "0"], "--chunk-words must be >= 1"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, built, capsys, tmp_path):
    root, out = built
    argv = [str(out) if a == "DS" else str(root / "corpus.jsonl") if a == "IN" else
            str(tmp_path / "x") if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_bad_query_file_names_the_line(built, capsys, tmp_path):
    _, out = built
    q = tmp_path / "q.jsonl"
    q.write_text('{"query": "ok"}\n{broken\n')
    assert main(["search", str(out), "--queries", str(q)]) == 2
    assert "q.jsonl:2: malformed JSON" in capsys.readouterr().err


def test_python_dash_m_relm():
    proc = subprocess.run([sys.executable, "-m", "relm", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "build" in proc.stdout and "search" in proc.stdout


def test_bm25_hybrid_sharded_search_and_filters(built, capsys):
    _, out = built
    assert main(["index", str(out), "--name", "bm", "--bm25"]) == 0
    assert main(["index", str(out), "--name", "dom", "--shard-by", "domain"]) == 0
    assert "index 'bm' (bm25)" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert "index       bm (bm25" in capsys.readouterr().out
    for extra in (["--retriever", "bm25", "--index", "bm"],
                  ["--retriever", "hybrid", "--bm25-index", "bm", "--fusion", "rrf"],
                  ["--retriever", "hybrid", "--bm25-index", "bm", "--fusion", "hierarchical"],
                  ["--retriever", "hybrid", "--bm25-index", "bm", "--fusion", "interpolate", "--alpha", "0.3"],
                  ["--retriever", "sharded", "--index", "dom"]):
        assert main(["search", str(out), "whale ship captain", "-k", "3", "--json", *extra]) == 0, extra
        row = json.loads(capsys.readouterr().out)
        assert 1 <= len(row["hits"]) <= 3
    # filters: domain and time
    assert main(["search", str(out), "whale", "-k", "20", "--json", "--domain", "beta"]) == 0
    assert {h["domain"] for h in json.loads(capsys.readouterr().out)["hits"]} == {"beta"}
    cut = "2020-09-16T00:00:00Z"  # between the documents' days (1.6e9 + i days)
    assert main(["search", str(out), "whale", "-k", "20", "--json", "--before", cut]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and all(h["timestamp"] < cut for h in hits)
    assert main(["search", str(out), "whale", "--before", "soon"]) == 2
    assert "--before 'soon'" in capsys.readouterr().err
    assert main(["search", str(out), "whale", "--retriever", "ann"]) == 2
    assert "needs --index" in capsys.readouterr().err


def test_add_delete_compact_from_the_cli(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(n_docs=4))
    out = tmp_path / "ds"
    assert main(["-q", "build", str(corpus), "--out", str(out), "--chunk-words", "50", "--min-words", "5"]) == 0
    assert main(["-q", "index", str(out), "--name", "bm", "--bm25"]) == 0
    extra = write_jsonl(tmp_path / "x.jsonl", [{"id": "extra", "text": "a harpoon on the island of the king"}])
    capsys.readouterr()
    assert main(["add", str(out), str(extra)]) == 0
    added = capsys.readouterr().out
    assert "added 1 documents" in added and "updated indexes: bm" in added
    assert main(["search", str(out), "harpoon island king", "-k", "1", "--json",
                 "--retriever", "bm25", "--index", "bm"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["doc_id"] == "extra"
    assert main(["delete", str(out), "--doc-id", "extra"]) == 0
    assert main(["search", str(out), "harpoon island king", "-k", "50", "--json",
                 "--retriever", "bm25", "--index", "bm"]) == 0
    assert "extra" not in {h["doc_id"] for h in json.loads(capsys.readouterr().out.splitlines()[-1])["hits"]}
    assert main(["delete", str(out), "--doc-id", "nope"]) == 2
    assert main(["compact", str(out)]) == 0
    assert "rebuilt indexes: bm" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["documents"] == 4 and info["deleted"] is None and info["generation"] == 2


def test_ann_index_tune_eval_and_search(built, capsys):
    _, out = built
    assert main(["index", str(out), "--name", "hn", "--factory", "hnsw", "--tune", "--target-recall", "0.9",
                 "--tune-queries", "10", "--tune-k", "3"]) == 0
    assert "tuned" in capsys.readouterr().out
    assert main(["index-eval", str(out), "--name", "hn", "--n-queries", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recall@1"] >= 0.9 and report["bytes_per_vector"] > 0
    assert main(["search", str(out), "whale ship captain", "-k", "3", "--json", "--retriever", "ann",
                 "--index", "hn"]) == 0
    ann = json.loads(capsys.readouterr().out)["hits"]
    assert main(["search", str(out), "whale ship captain", "-k", "3", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)["hits"]
    assert [h["passage_id"] for h in ann] == [h["passage_id"] for h in exact]  # a tiny HNSW is exact
    assert main(["index", str(out), "--name", "x", "--factory", "NoSuchIndex42"]) == 2
    assert "NoSuchIndex42" in capsys.readouterr().err
    assert main(["index", str(out), "--name", "a", "--factory", "auto"]) == 2
    assert "--memory-budget" in capsys.readouterr().err
    assert main(["index", str(out), "--name", "a", "--factory", "auto", "--memory-budget", "1GB"]) == 0
    assert "plan:" in capsys.readouterr().out
