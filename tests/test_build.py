"""Datastore builds: layout and contents, token mode, resumption after a kill, reruns and bad states."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from relm import (
    BuildConfig,
    ChunkConfig,
    Datastore,
    DatastoreError,
    InputError,
    ReaderConfig,
    build_datastore,
)
from relm.corpus.chunking import chunk_words
from relm.datastore import build as build_mod
from relm.datastore import layout as L

from conftest import corpus_records, make_text, write_jsonl


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root except stats.json (which holds wall-clock timings)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != L.STATS
    }


def test_build_layout_and_contents(tmp_path, small_corpus, encoder):
    config = BuildConfig(chunk=ChunkConfig(max_words=64, min_words=8), shard_size=7)
    ds = build_datastore([small_corpus], tmp_path / "ds", config, encoder=encoder)
    records = corpus_records()

    expected = []  # (doc index, passage text) from the chunker, document by document
    for j, r in enumerate(records):
        expected += [(j, r["text"][a:b]) for a, b, _ in chunk_words(r["text"], 64, 8)]
    assert len(ds) == len(expected)
    assert ds.n_documents == len(records)
    assert [ds.passage(i) for i in range(len(ds))] == [t for _, t in expected]
    assert ds.doc_index.tolist() == [j for j, _ in expected]
    assert ds.doc_index.dtype == np.uint32
    # document j owns a contiguous passage range; passages never cross documents
    for j in range(len(records)):
        texts = [ds.passage(i) for i in ds.document_passages(j)]
        assert " ".join(" ".join(t.split()) for t in texts) == " ".join(records[j]["text"].split())

    rec = ds.document(3)
    assert rec["id"] == "doc-3" and rec["domain"] == "beta" and rec["title"] == "Title 3"
    assert rec["metadata"] == {"lang": "en"} and rec["timestamp"] == 1_600_000_000 + 3 * 86_400
    assert ds.doc_timestamp[3] == rec["timestamp"]
    assert ds.domains == ["alpha", "beta"] and ds.doc_domain.tolist() == [i % 2 for i in range(12)]

    m = ds.manifest
    assert m["format"] == L.FORMAT and m["format_version"] == L.FORMAT_VERSION
    assert m["encoder"]["model"] == "all-MiniLM-L6-v2" and m["encoder"]["dim"] == 384
    assert m["encoder"]["normalize"] is True
    assert m["chunker"] == {"mode": "words", "max_words": 64, "min_words": 8, "max_tokens": "auto",
                            "prepend_title": False, "passage_tokens": 254}
    assert m["counts"]["shards"] == -(-len(expected) // 7)
    assert sum(s["rows"] for s in m["embeddings"]["shards"]) == len(ds)
    assert m["inputs"][0]["sha256"] and m["inputs"][0]["bytes"] == small_corpus.stat().st_size
    assert m["counts"]["words"] == sum(len(r["text"].split()) for r in records)

    # embeddings: float16 memmaps equal to encoding the passages directly
    for _start, arr in ds.embedding_shards:
        assert isinstance(arr, np.memmap) and arr.dtype == np.float16
    direct = encoder.encode([t for _, t in expected], normalize=True)
    got = ds.embeddings(range(len(ds))).astype(np.float32)
    np.testing.assert_allclose(got, direct, atol=2e-3)
    assert not (tmp_path / "ds" / L.STAGING).exists()
    stats = json.loads((tmp_path / "ds" / L.STATS).read_text())
    assert stats["counts"]["passages"] == len(ds) and stats["seconds"]["encode"] > 0
    assert stats["throughput"]["passages_per_s"] > 0 and stats["peak_rss_mb"] > 0


def test_token_mode_chunks_and_continuations(tmp_path, small_corpus, encoder, word_tokenizer_dir):
    config = BuildConfig(chunk=ChunkConfig(mode="tokens", chunk_tokens=16, tokenizer=str(word_tokenizer_dir)),
                         shard_size=10)
    ds = build_datastore([small_corpus], tmp_path / "ds", config, encoder=encoder)
    records = corpus_records()
    assert ds.kind == "tokens"
    tok = ds.manifest["tokens"]
    assert tok["dtype"] == "uint16" and tok["tokenizer"]["vocab_size"] < 100

    from relm.corpus.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(word_tokenizer_dir))
    for j, r in enumerate(records):
        ids, _ = tokenizer.encode(r["text"])
        chunks = list(ds.document_passages(j))
        # the chunk texts tile the document exactly; the stored ids are the document's ids
        assert "".join(ds.passage(i) for i in chunks) == r["text"]
        assert np.concatenate([ds.chunk_tokens(i) for i in chunks]).tolist() == ids.tolist()
        assert all(len(ds.chunk_tokens(i)) == 16 for i in chunks[:-1])
        assert 1 <= len(ds.chunk_tokens(chunks[-1])) <= 16
        for i in chunks[:-1]:
            assert ds.continuation(i).tolist() == ds.chunk_tokens(i + 1).tolist()
        assert ds.continuation(chunks[-1]) is None  # never wraps into the next document
    assert ds.manifest["counts"]["tokens"] == sum(len(tokenizer.encode(r["text"])[0]) for r in records)


def test_default_tokenizer_is_smollm2_from_gguf(tmp_path, encoder):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": make_text(1, 200)}])
    ds = build_datastore([corpus], tmp_path / "ds", BuildConfig(chunk=ChunkConfig(mode="tokens")), encoder=encoder)
    t = ds.manifest["tokens"]["tokenizer"]
    assert t["name"] == "smollm2" and t["vocab_size"] == 49152 and t["id_dtype"] == "uint16"
    assert "".join(ds.passages(range(len(ds)))) == make_text(1, 200)
    assert all(len(ds.chunk_tokens(i)) == 64 for i in range(len(ds) - 1))


def test_word_datastore_has_no_tokens(tmp_path, small_corpus, encoder):
    ds = build_datastore([small_corpus], tmp_path / "ds", encoder=encoder)
    with pytest.raises(DatastoreError, match="--chunk-tokens"):
        ds.chunk_tokens(0)


class _Interrupt(Exception):
    pass


def test_interrupted_build_resumes_byte_identical(tmp_path, small_corpus, encoder, monkeypatch):
    config = BuildConfig(chunk=ChunkConfig(max_words=40, min_words=5), shard_size=5)
    reference = build_datastore([small_corpus], tmp_path / "ref", config, encoder=encoder)
    assert reference.manifest["counts"]["shards"] >= 5

    # interrupt right after the third shard is written, and again inside finalize
    flush = build_mod._Builder._flush
    calls = {"n": 0}

    def flaky_flush(self, shard):
        flush(self, shard)
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Interrupt

    monkeypatch.setattr(build_mod._Builder, "_flush", flaky_flush)
    with pytest.raises(_Interrupt):
        build_datastore([small_corpus], tmp_path / "ds", config, encoder=encoder)
    staged = sorted(p.parent.name for p in (tmp_path / "ds" / L.STAGING).glob("shard-*/done.json"))
    assert staged == ["shard-00000", "shard-00001", "shard-00002"]
    with pytest.raises(DatastoreError, match="has not finished"):
        Datastore.open(tmp_path / "ds")
    monkeypatch.setattr(build_mod._Builder, "_flush", flush)

    finalize = build_mod._Builder._finalize_docs
    monkeypatch.setattr(build_mod._Builder, "_finalize_docs", lambda *a: (_ for _ in ()).throw(_Interrupt()))
    with pytest.raises(_Interrupt):
        build_datastore([small_corpus], tmp_path / "ds", config, encoder=encoder)
    monkeypatch.setattr(build_mod._Builder, "_finalize_docs", finalize)

    encoded = []
    original_encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts, **kw: encoded.append(len(texts)) or original_encode(texts, **kw))
    build_datastore([small_corpus], tmp_path / "ds", config, encoder=encoder)
    assert encoded == []  # every shard was already done: nothing re-encoded
    assert tree_bytes(tmp_path / "ds") == tree_bytes(tmp_path / "ref")
    stats = json.loads((tmp_path / "ds" / L.STATS).read_text())
    assert stats["resumed_shards"] == reference.manifest["counts"]["shards"]


def _build_cmd(corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "relm", "-q", "build", str(corpus), "--out", str(out),
            "--chunk-words", "30", "--min-words", "5", "--shard-size", "4", "--batch-size", "4"]


@pytest.mark.slow
def test_build_killed_with_sigkill_resumes_byte_identical(tmp_path):
    """A real process with the real encoder killed with SIGKILL mid-build, rerun with the same command
    (the fast default is the crash-injection sweep in test_crash.py, with a hash encoder)."""
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(n_docs=16, base_words=60))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(_build_cmd(corpus, tmp_path / "ref"), check=True, env=env, timeout=600)

    out = tmp_path / "ds"
    proc = subprocess.Popen(_build_cmd(corpus, out), env=env)
    marker = out / L.STAGING / "shard-00002" / "done.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not (out / L.MANIFEST).exists()

    subprocess.run(_build_cmd(corpus, out), check=True, env=env, timeout=600)
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")
    assert json.loads((out / L.STATS).read_text())["resumed_shards"] >= 3


def test_rerun_overwrite_and_refusals(tmp_path, small_corpus, encoder, caplog):
    out = tmp_path / "ds"
    ds0 = build_datastore([small_corpus], out, encoder=encoder)
    before = tree_bytes(out)
    with caplog.at_level("INFO", logger="relm"):
        build_datastore([small_corpus], out, encoder=encoder)
    assert "nothing to do" in caplog.text and tree_bytes(out) == before

    other = BuildConfig(chunk=ChunkConfig(max_words=50, min_words=5))
    with pytest.raises(DatastoreError, match="--overwrite"):
        build_datastore([small_corpus], out, other, encoder=encoder)
    ds = build_datastore([small_corpus], out, other, encoder=encoder, overwrite=True)
    assert ds.manifest["chunker"]["max_words"] == 50

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatastoreError, match="not a relm datastore"):
        build_datastore([small_corpus], foreign, encoder=encoder, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"

    # an unfinished build of other inputs: refused once it has encoded shards, discarded before
    partial = tmp_path / "partial"
    (partial / L.STAGING / "shard-00000").mkdir(parents=True)
    (partial / L.STAGING / "plan.json").write_text(json.dumps({"other": "plan"}))
    (partial / L.STAGING / "shard-00000" / "done.json").write_text("{}")
    with pytest.raises(DatastoreError, match="unfinished build of other inputs.*rerun the command that started it"):
        build_datastore([small_corpus], partial, encoder=encoder)
    (partial / L.STAGING / "shard-00000" / "done.json").unlink()
    assert len(build_datastore([small_corpus], partial, encoder=encoder)) == len(ds0)


def test_unknown_format_version_is_refused(tmp_path, small_corpus, encoder):
    out = tmp_path / "ds"
    build_datastore([small_corpus], out, encoder=encoder)
    m = json.loads((out / L.MANIFEST).read_text())
    m["format_version"] = 99
    (out / L.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DatastoreError, match="version 99 is not supported.*upgrade relm"):
        Datastore.open(out)
    with pytest.raises(DatastoreError, match="no such datastore"):
        Datastore.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatastoreError, match="not a relm datastore"):
        Datastore.open(tmp_path / "empty")


def test_bad_input_stops_or_is_counted(tmp_path, encoder):
    good = corpus_records(n_docs=4)
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(r) for r in good]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"id": "x", "body": "no text field"}))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"c\.jsonl:3: malformed JSON"):
        build_datastore([path], tmp_path / "ds", encoder=encoder)
    config = BuildConfig(reader=ReaderConfig(on_error="skip"))
    ds = build_datastore([path], tmp_path / "ds2", config, encoder=encoder)
    read = ds.manifest["build"]["read"]
    assert ds.n_documents == 4
    assert read["skipped"] == {"bad_json": 1, "missing_text": 1} and read["skipped_total"] == 2
    assert any(":3:" in e for e in read["skipped_examples"])


def test_duplicate_ids(tmp_path, encoder):
    recs = corpus_records(n_docs=3) + [dict(corpus_records(n_docs=2)[1], text="another text entirely")]
    path = write_jsonl(tmp_path / "dup.jsonl", recs)
    with pytest.raises(InputError, match="doc-1.*seen before"):
        build_datastore([path], tmp_path / "ds", encoder=encoder)
    ds = build_datastore([path], tmp_path / "ds2", BuildConfig(reader=ReaderConfig(on_error="skip")),
                         encoder=encoder)
    assert ds.n_documents == 3 and ds.manifest["build"]["read"]["skipped"] == {"duplicate_id": 1}


def test_inputs_inside_the_output_are_ignored(tmp_path, encoder):
    corpus_dir = tmp_path / "corpus"
    write_jsonl(corpus_dir / "a.jsonl", corpus_records(n_docs=3))
    out = corpus_dir / "ds"
    build_datastore([corpus_dir], out, encoder=encoder)
    # the datastore holds docs/records.jsonl; a rebuild must not read it as corpus
    ds = build_datastore([corpus_dir], out, encoder=encoder)
    assert ds.n_documents == 3


def test_a_build_split_into_parts_and_assembled_is_byte_identical(tmp_path):
    """files[rank::2] chunked as two parts, assembled, then encoded job by job == the one-process build."""
    from relm.datastore import build_in_parts

    from conftest import HashEncoder

    records = corpus_records(n_docs=15, base_words=40)
    for i in range(5):
        write_jsonl(tmp_path / "in" / f"f{i}.jsonl", records[i::5])
    config = BuildConfig(chunk=ChunkConfig(max_words=16, min_words=4), shard_size=7, batch_size=2)
    one = build_datastore([tmp_path / "in"], tmp_path / "one", config, encoder=HashEncoder())
    parts = build_in_parts([tmp_path / "in"], tmp_path / "two", config, world_size=2, encoder=HashEncoder(),
                           passages_per_job=4)
    a, b = tree_bytes(one.root), tree_bytes(parts.root)
    a.pop("stats.json", None), b.pop("stats.json", None)
    assert a == b and len(parts) == len(one) and not (parts.root / L.STAGING).exists()

    dup = write_jsonl(tmp_path / "dup" / "z.jsonl", records[:1])
    with pytest.raises(InputError, match="more than one part"):
        build_in_parts([tmp_path / "in" / "f0.jsonl", dup], tmp_path / "three", config, world_size=2,
                       encoder=HashEncoder())


def test_a_split_build_is_byte_identical_with_a_real_transformer_and_resumes_its_encode_jobs(tmp_path, encoder):
    """MiniLM's vectors depend on what a text is batched with (checked here, so the test has teeth); the
    split build encodes the one-process build's planned batches, in jobs, and gets its exact bytes. A
    build killed in its encode jobs reruns only the jobs it had not finished."""
    from relm.datastore import build_in_parts
    from relm.encoders.batching import batch_plan

    records = corpus_records(n_docs=40, base_words=30)
    for r, extra in zip(records, range(40), strict=True):
        r["text"] = " ".join(r["text"].split()[: 12 + 3 * (extra % 7)])  # passages of many lengths
    write_jsonl(tmp_path / "in" / "a.jsonl", records[:34])  # one large file: parallel over batches, not files
    write_jsonl(tmp_path / "in" / "b.jsonl", records[34:])
    config = BuildConfig(chunk=ChunkConfig(max_words=20, min_words=4), shard_size=40, batch_size=8)
    one = build_datastore([tmp_path / "in"], tmp_path / "one", config, encoder=encoder)

    texts = one.passage_input_texts(range(len(one)))
    other = np.concatenate([encoder.encode(texts[i : i + 5], batch_size=5) for i in range(0, len(texts), 5)])
    assert (other.astype(np.float16) != one.embeddings(range(len(one)))).any(), "no batch dependence to test"
    assert len(one) > 40 and len(batch_plan(texts[:40], 8)) == 5  # two shards: 3 + 1 jobs of 16 passages

    class Killed(Exception):
        pass

    class DiesInThirdJob:
        def __init__(self):
            self.calls = 0
            self.dim, self.name = encoder.dim, encoder.name

        def __getattr__(self, name):
            return getattr(encoder, name)

        def encode(self, batch, **kw):
            if len(batch) == 8:  # a planned batch, not the 5 probe texts
                self.calls += 1
                if self.calls > 4:
                    raise Killed()
            return encoder.encode(batch, **kw)

    with pytest.raises(Killed):
        build_in_parts([tmp_path / "in"], tmp_path / "two", config, world_size=2, encoder=DiesInThirdJob(),
                       passages_per_job=16)
    finished = sorted((tmp_path / "two" / L.STAGING / "vectors").glob("shard-*/job-*.npy"))
    assert len(finished) == 2
    parts = build_in_parts([tmp_path / "in"], tmp_path / "two", config, world_size=2, encoder=encoder,
                           passages_per_job=16)
    stats = json.loads((parts.root / L.STATS).read_text())
    assert stats["encoded_passages"] == len(one) - 32  # the two finished jobs were kept
    a, b = tree_bytes(one.root), tree_bytes(parts.root)
    a.pop("stats.json", None), b.pop("stats.json", None)
    assert a == b


def test_stats_count_the_encoder_load_once(tmp_path, small_corpus, monkeypatch):
    """Loading the encoder is timed as load_encoder, not also inside encode or chunk (the passage token
    budget is the encoder's: the first document's chunking used to load it inside the chunk timer)."""
    import relm.encoders

    from conftest import HashEncoder

    def slow_load(config=None, **kw):
        time.sleep(0.4)
        return HashEncoder()

    monkeypatch.setattr(relm.encoders, "load_encoder", slow_load)
    build_datastore([small_corpus], tmp_path / "ds")
    seconds = json.loads((tmp_path / "ds" / L.STATS).read_text())["seconds"]
    assert seconds["load_encoder"] >= 0.4 and seconds["encode"] < 0.4 and seconds["chunk"] < 0.4


def test_shard_texts_are_written_one_at_a_time_with_their_byte_offsets(tmp_path):
    from relm.datastore.build import _write_texts

    texts = ["plain", "", "ünïcödé – 字", "x" * 5000, ""]
    offsets = _write_texts(tmp_path / "text.bin", texts)
    data = (tmp_path / "text.bin").read_bytes()
    assert data == "".join(texts).encode("utf-8") and offsets.dtype == np.uint64
    assert [data[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(len(texts))] == texts
    assert not list(tmp_path.glob("*.tmp*"))  # committed under its own name


def test_a_shard_makes_its_titled_inputs_on_demand():
    from relm.corpus.documents import with_title
    from relm.datastore.build import ShardBuffer

    shard = ShardBuffer(0, 0, texts=["alpha beta", "gamma", "delta"], titles=["Title", None, "  "])
    want = [with_title(t, x) for t, x in zip(shard.titles, shard.texts, strict=True)]
    assert want == ["Title alpha beta", "gamma", "delta"]
    inputs = shard.inputs
    assert len(inputs) == 3 and list(inputs) == want and inputs[1:] == want[1:] and inputs[0] == want[0]
    assert not any(isinstance(v, list) and v and v[0] == want[0] for v in vars(shard).values())  # not held
