"""Query files: ids as the file gives them (BEIR's `_id` too), gzip, headers, and no silent line numbers."""

from __future__ import annotations

import gzip
import json

import pytest

from relm import InputError
from relm.corpus.queries import read_queries


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_beir_ids_are_read_not_replaced_by_line_numbers(tmp_path):
    path = _jsonl(tmp_path / "queries.jsonl", [{"_id": "0", "text": "a"}, {"_id": "1097", "text": "b"}])
    assert read_queries(path) == [("0", "a"), ("1097", "b")]
    ids = _jsonl(tmp_path / "q2.jsonl", [{"id": "x", "query": "a"}, {"qid": "y", "id": "z", "query": "b"}])
    assert read_queries(ids) == [("x", "a"), ("z", "b")]
    with pytest.raises(InputError, match=r"q2.jsonl:1: no 'qid' field"):
        read_queries(ids, "qid")  # a named field must be on every line


def test_ids_on_some_lines_only_are_refused(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [{"id": "7", "query": "a"}, {"query": "b"}])
    with pytest.raises(InputError, match=r"q.jsonl:2: no 'id' field .*--query-id-field"):
        read_queries(path)


def test_no_ids_at_all_are_numbered_by_line_with_a_warning(tmp_path, caplog):
    path = _jsonl(tmp_path / "q.jsonl", [{"query": "a"}, {"query": "b"}])
    with caplog.at_level("WARNING", logger="relm"):
        assert read_queries(path) == [("1", "a"), ("2", "b")]
    assert "numbering the queries by line" in caplog.text


def test_gzip_tsv_with_a_header(tmp_path):
    path = tmp_path / "topics.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("query-id\ttext\n1\twhat is a datastore\n2\thow do I read gzip\n")
    assert read_queries(str(path)) == [("1", "what is a datastore"), ("2", "how do I read gzip")]


def test_gzip_without_a_gz_name_says_so(tmp_path):
    path = tmp_path / "topics.tsv"
    path.write_bytes(gzip.compress(b"1\tq\n"))
    with pytest.raises(InputError, match="gzip-compressed without a .gz name"):
        read_queries(str(path))


def test_cli_search_reads_beir_queries(tmp_path, capsys):
    from relm.cli import main

    from conftest import build_hash_datastore

    ds = build_hash_datastore(tmp_path, n_docs=20)
    import relm.encoders

    from conftest import HashEncoder

    original = relm.encoders.load_encoder
    relm.encoders.load_encoder = lambda config=None, **kw: HashEncoder()
    try:
        q = _jsonl(tmp_path / "queries.jsonl", [{"_id": "4983", "text": ds.passage(3)}])
        assert main(["search", str(ds.root), "--queries", q, "-k", "1", "--format", "trec"]) == 0
    finally:
        relm.encoders.load_encoder = original
    assert capsys.readouterr().out.split()[0] == "4983"
