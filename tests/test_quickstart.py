"""`relm quickstart`: the Python-docs corpus, the held-out split, and the whole loop on tiny inputs."""

from __future__ import annotations

import json

from relm.quickstart import (
    corpus_fingerprint,
    held_out,
    module_text,
    python_docs_corpus,
    python_docs_records,
    split_corpus,
)

from conftest import corpus_records, write_jsonl


def test_python_docs_corpus_is_bundled_text():
    docs = list(python_docs_corpus())
    domains = {d["domain"] for d in docs}
    assert domains == {"pydoc-topics", "stdlib-docstrings"}
    assert len({d["id"] for d in docs}) == len(docs) and all(d["text"].strip() for d in docs)
    assert sum(len(d["text"].split()) for d in docs) > 50_000
    assert "json.loads(" in module_text("json") and module_text("no_such_module_xyz") is None


def test_python_docs_records_do_not_depend_on_this_process(monkeypatch):
    """The corpus comes from a fresh isolated interpreter: what this process imported or patched (torch
    replaces inspect.getfile; every logging handler shows in logging.shutdown's default) and memory
    addresses (different in every process) leave it unchanged."""
    import inspect
    import logging

    from relm.pydocs import without_addresses

    assert without_addresses("f(x=<object object at 0x7f3a1b2c>, g=<function g at 0xABC>)") == \
        "f(x=<object object>, g=<function g>)"
    first = python_docs_records()
    monkeypatch.setattr(inspect, "getfile", lambda obj: "patched")  # no longer counted as part of inspect
    handler = logging.StreamHandler()
    logging.getLogger("relm-test-extra").addHandler(handler)
    try:
        again = python_docs_records()
    finally:
        logging.getLogger("relm-test-extra").removeHandler(handler)
    assert corpus_fingerprint(again) == corpus_fingerprint(first) and again == first
    texts = {r["id"]: r["text"] for r in first}
    assert "inspect.getfile(object) (function)" in texts["module/inspect"]
    assert not any(" at 0x" in t for t in texts.values())  # e.g. dataclasses.field(default=<..._MISSING_TYPE object>)
    assert "<dataclasses._MISSING_TYPE object>" in texts["module/dataclasses"]


def test_heldout_split_is_stable_and_disjoint(tmp_path):
    assert 0.07 < sum(held_out(f"doc-{i}") for i in range(5000)) / 5000 < 0.13
    records = corpus_records(40)
    corpus, heldout, counts = split_corpus(records, tmp_path)
    train_ids = {json.loads(x)["id"] for x in corpus.read_text().splitlines()}
    ev_ids = {json.loads(x)["id"] for x in heldout.read_text().splitlines()}
    assert train_ids.isdisjoint(ev_ids) and len(train_ids | ev_ids) == 40 and ev_ids
    assert counts == {"corpus_documents": len(train_ids), "heldout_documents": len(ev_ids)}
    assert split_corpus(records, tmp_path / "again")[2] == counts


def test_quickstart_on_a_user_corpus(tmp_path, tiny_lm_dir, capsys):
    from relm.cli import main

    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(30, base_words=120))
    out = tmp_path / "qs"
    code = main(["quickstart", "--corpus", str(corpus), "--out", str(out), "--lm", str(tiny_lm_dir),
                 "--window", "48", "--max-windows", "2", "--max-new-tokens", "4", "--question", "whale ship?",
                 "--heldout", "0.2"])
    assert code == 0
    data = json.loads((out / "quickstart.json").read_text())
    assert data["counts"]["heldout_documents"] > 0 and data["passages"] > 0
    assert set(data["summary"]["overall"]) == {"none", "massiveds"}  # the default: the headline only
    assert data["summary"]["settings"]["retriever"]["query_truncation"] == "left"
    assert len(data["corpus"]["sha256"]) == 16 and data["corpus"]["python"] and data["words"] > 0
    assert data["answers"][0]["question"] == "whale ship?" and len(data["answers"][0]["passages"]) == 2
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "LM + retrieval:" in printed and "| overall | none |" in printed
    assert main(["quickstart", "--corpus", str(corpus), "--out", str(out), "--heldout", "1.5"]) == 2
