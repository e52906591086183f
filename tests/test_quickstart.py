"""`relm quickstart`: the Python-docs corpus, the held-out split, and the whole loop on tiny inputs."""

from __future__ import annotations

import json

from relm.quickstart import held_out, module_text, python_docs_corpus, split_corpus

from conftest import corpus_records, write_jsonl


def test_python_docs_corpus_is_bundled_text():
    docs = list(python_docs_corpus())
    domains = {d["domain"] for d in docs}
    assert domains == {"pydoc-topics", "stdlib-docstrings"}
    assert len({d["id"] for d in docs}) == len(docs) and all(d["text"].strip() for d in docs)
    assert sum(len(d["text"].split()) for d in docs) > 50_000
    assert "json.loads(" in module_text("json") and module_text("no_such_module_xyz") is None


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
    assert set(data["summary"]["overall"]) == {"none", "massiveds", "last-q"}
    assert data["answers"][0]["question"] == "whale ship?" and len(data["answers"][0]["passages"]) == 2
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "LM + retrieval:" in printed and "| overall | none |" in printed
    assert main(["quickstart", "--corpus", str(corpus), "--out", str(out), "--heldout", "1.5"]) == 2
