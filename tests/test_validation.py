"""Hostile input: every bad value gets one clear error (or a counted warning), never a traceback, never silence.

One section per finding of the hostile-user probe: symlinked input directories, NaN and out-of-range
arguments, negative epoch times, eval windows shorter than the config, variant requirements checked
up front, and NaN in input JSON versus strict JSON output.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relm.cli import main
from relm.config import BuildConfig, ChunkConfig, EncoderConfig, ReaderConfig
from relm.corpus.documents import parse_timestamp
from relm.corpus.readers import ReadStats, read_documents, resolve_inputs
from relm.errors import ConfigError, InputError

from conftest import HashEncoder, build_hash_datastore, make_text, write_jsonl


def strict_loads(line: str):
    """json.loads that refuses NaN / Infinity, as every JSON parser outside Python does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def hash_ds(tmp_path_factory):
    return build_hash_datastore(tmp_path_factory.mktemp("validation"), n_docs=60)


@pytest.fixture
def hash_queries(monkeypatch):
    from relm.datastore.store import Datastore

    monkeypatch.setattr(Datastore, "encoder", lambda self: HashEncoder())


# -- 1. symbolic links inside input directories ----------------------------------------------------
def _doc(path: Path, text: str) -> Path:
    return write_jsonl(path, [{"text": text}])


def test_symlinked_directory_is_followed(tmp_path):
    root = tmp_path / "corpus"
    _doc(root / "a.jsonl", "a")
    _doc(tmp_path / "elsewhere" / "b.jsonl", "b")
    os.symlink(tmp_path / "elsewhere", root / "more")
    for pattern in (root, str(root / "*"), str(root / "**" / "*.jsonl")):
        inputs = resolve_inputs([pattern])
        assert [i.path.relative_to(root).as_posix() for i in inputs] == ["a.jsonl", "more/b.jsonl"], pattern
    assert [d.text for d in read_documents(resolve_inputs([root]))] == ["a", "b"]


def test_relm_build_reads_a_symlinked_directory(tmp_path):
    from relm import build_datastore

    root = tmp_path / "corpus"
    _doc(root / "a.jsonl", make_text(1, 30))
    _doc(tmp_path / "linked" / "b.jsonl", make_text(2, 30))
    os.symlink(tmp_path / "linked", root / "linked")
    ds = build_datastore([root], tmp_path / "ds", BuildConfig(chunk=ChunkConfig(max_words=50, min_words=2)),
                         encoder=HashEncoder())
    assert ds.n_documents == 2


def test_symlink_loops_and_aliases_are_read_once_with_a_warning(tmp_path, caplog):
    root = tmp_path / "corpus"
    _doc(root / "a.jsonl", "a")
    _doc(root / "sub" / "b.jsonl", "b")
    os.symlink("..", root / "sub" / "loop")  # a cycle back to the root
    os.symlink("sub", root / "alias")  # a second name for sub/
    os.symlink("a.jsonl", root / "a_link.jsonl")  # a second name for a file
    os.symlink("nowhere.jsonl", root / "broken.jsonl")
    with caplog.at_level(logging.WARNING, logger="relm"):
        inputs = resolve_inputs([root])
    # the real paths win over the paths through links
    assert [i.path.relative_to(root).as_posix() for i in inputs] == ["a.jsonl", "sub/b.jsonl"]
    log = caplog.text
    assert "symbolic link loop" in log and "sub/loop" in log
    assert "alias: skipped, it is the same directory as" in log
    assert "a_link.jsonl: skipped, it is the same file as" in log
    assert "broken.jsonl: skipped a broken symbolic link" in log


def test_recursive_glob_over_a_symlink_loop_lists_each_file_once(tmp_path):
    root = tmp_path / "corpus"
    _doc(root / "a.jsonl", "a")
    _doc(root / "sub" / "b.jsonl", "b")
    os.symlink("..", root / "sub" / "loop")
    # glob.glob(recursive=True) follows the loop (sub/loop/sub/loop/...) and lists the files many times
    inputs = resolve_inputs([str(root / "**" / "*.jsonl")])
    assert [i.path.relative_to(root).as_posix() for i in inputs] == ["a.jsonl", "sub/b.jsonl"]


def test_a_broken_symlink_given_by_name_says_so(tmp_path):
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "link.jsonl")
    with pytest.raises(InputError, match="broken symbolic link"):
        resolve_inputs([tmp_path / "link.jsonl"])


# -- 2. NaN, inf and out-of-range arguments --------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: BuildConfig(batch_size=0), "--batch-size must be >= 1"),
    (lambda: BuildConfig(batch_size=1.5), "--batch-size must be an integer >= 1"),
    (lambda: BuildConfig(batch_size=True), "--batch-size must be an integer"),
    (lambda: BuildConfig(shard_size=0), "--shard-size must be >= 1"),
    (lambda: ChunkConfig(max_words=-5), "--chunk-words must be >= 1"),
    (lambda: ChunkConfig(mode="tokens", chunk_tokens=0), "--chunk-tokens must be >= 1"),
    (lambda: EncoderConfig(max_seq_length=0), "--max-seq-length must be >= 1"),
    (lambda: ReaderConfig(text_field=""), "--text-field must be a non-empty string"),
    (lambda: BuildConfig(chunk={"max_words": 5}), "BuildConfig.chunk must be a ChunkConfig"),
])
def test_configs_reject_bad_values(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_retriever_api_rejects_nan_and_out_of_range(hash_ds):
    from relm.retrieval.fusion import adaptive_k, threshold
    from relm.retrieval.retriever import Retriever, make_retriever

    r = Retriever(hash_ds)
    for kwargs, message in [
        ({"threshold": float("nan")}, r"threshold \(--threshold\) must be a finite number"),
        ({"threshold": float("inf")}, "finite"),
        ({"adaptive": {"max_drop": -1}}, r"max_drop \(--adaptive-k GAP\) must be >= 0"),
        ({"adaptive": {"max_drop": float("nan")}}, "finite"),
        ({"adaptive": {"max_ratio": 2}}, r"max_ratio must be in \[0, 1\]"),
        ({"adaptive": {"gap": 1}}, "unknown option"),
        ({"before": float("nan")}, "not a finite number"),
        ({"before": 10, "after": 20}, "no document can match"),
    ]:
        with pytest.raises(ConfigError, match=message):
            r.search_ids("whale", 3, **kwargs)
    for kwargs, message in [
        ({"cache_bytes": -5}, r"cache_bytes \(--cache-mb\) must be >= 0"),
        ({"batch_size": 0}, r"batch_size \(--batch-size\) must be >= 1"),
        ({"candidates": 0}, "candidates"),
        ({"alpha": float("nan")}, "alpha"),
        ({"nprobe": 0}, "nprobe"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_retriever(hash_ds, "exact", **kwargs)
    run = (np.array([[0.9, 0.5, 0.1]], np.float32), np.array([[1, 2, 3]]))
    with pytest.raises(ConfigError, match="finite"):
        threshold(run, float("nan"))
    with pytest.raises(ConfigError, match="max_drop"):
        adaptive_k(run, max_drop=-1.0)


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "nan"], "--threshold must be a finite number"),
    (["--threshold", "inf"], "--threshold must be a finite number"),
    (["--adaptive-k", "-1"], "--adaptive-k GAP (a score drop) must be >= 0"),
    (["--adaptive-k", "nan"], "--adaptive-k GAP (a score drop) must be a finite number >= 0"),
    (["--cache-mb", "-5"], "--cache-mb (0: off) must be in [0, 1e+06], got -5"),
    (["--cache-mb", "nan"], "--cache-mb (0: off) must be a finite number"),
    (["--cache-mb", "inf"], "--cache-mb (0: off) must be a finite number"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--candidates", "0"], "--candidates must be >= 1"),
    (["--alpha", "nan"], "--alpha must be a finite number in [0, 1]"),
    (["--nprobe", "0"], "--nprobe must be >= 1"),
    (["--probe-shards", "-2"], "--probe-shards must be >= 1"),
])
def test_cli_search_rejects_bad_numbers(hash_ds, hash_queries, capsys, extra, message):
    assert main(["search", str(hash_ds.root), "whale", "--json", *extra]) == 2
    assert message in one_line_error(capsys)


def test_cli_search_with_good_numbers_still_works(hash_ds, hash_queries, capsys):
    assert main(["search", str(hash_ds.root), "whale", "-k", "5", "--json", "--threshold", "-1",
                 "--adaptive-k", "0.5", "--cache-mb", "1", "--batch-size", "2"]) == 0
    assert 1 <= len(strict_loads(capsys.readouterr().out)["hits"]) <= 5


@pytest.mark.parametrize("extra, message", [
    (["--max-seq-length", "0"], "--max-seq-length must be >= 1"),
    (["--shard-size", "0"], "--shard-size must be >= 1"),
    (["--chunk-words", "-3"], "--chunk-words must be >= 1"),
])
def test_cli_build_rejects_bad_numbers(tmp_path, capsys, extra, message):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "x"}])
    assert main(["build", str(corpus), "--out", str(tmp_path / "ds"), "--no-progress", *extra]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("extra, message", [
    (["--min-words", "-1"], "--min-words must be >= 0"),
    (["--max-context", "0"], "--max-context must be >= 2"),
    (["--max-batch-tokens", "0"], "--max-batch-tokens must be >= 1"),
    (["--rerank-candidates", "-1"], "--rerank-candidates must be >= 1"),
    (["--ralm-stride", "0"], "(--ralm-stride) must be >= 1"),
    (["--stride", "0"], "stride (--stride) must be in [1, 47]"),
])
def test_cli_eval_rejects_bad_numbers_before_loading_the_lm(hash_ds, tmp_path, capsys, monkeypatch, extra,
                                                            message):
    import relm.lm

    monkeypatch.setattr(relm.lm, "load_lm", lambda *a, **k: pytest.fail("the LM was loaded"))
    evalf = write_jsonl(tmp_path / "e.jsonl", [{"text": make_text(1, 80)}])
    assert main(["eval", str(hash_ds.root), str(evalf), "--lm", str(tmp_path / "nolm"), "--window", "48",
                 "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in one_line_error(capsys)


# -- 3. negative epoch seconds ---------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("-86400", -86400), ("\u221286400", -86400), ("-1.5", -2), ("-8.64e4", -86400), (-0.5, -1),
    ("1969-12-31T00:00:00Z", -86400),
])
def test_negative_epoch_seconds_parse(value, expected):
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "0x10", "soon"])
def test_bad_times_name_the_accepted_formats(value):
    with pytest.raises(ValueError, match="accepted: epoch seconds .* or ISO 8601"):
        parse_timestamp(value)


def test_cli_search_accepts_negative_epoch_bounds(hash_ds, hash_queries, capsys):
    # the documents are dated 1_000_000 + i seconds (January 1970)
    root = str(hash_ds.root)
    assert main(["search", root, "whale", "-k", "3", "--json", "--before", "-86400"]) == 0
    assert strict_loads(capsys.readouterr().out)["hits"] == []
    assert main(["search", root, "whale", "-k", "3", "--json", "--after", "-86400"]) == 0
    assert len(strict_loads(capsys.readouterr().out)["hits"]) == 3
    assert main(["search", root, "whale", "-k", "3", "--json", "--after=-8.64e4", "--before", "1000005"]) == 0
    hits = strict_loads(capsys.readouterr().out)["hits"]
    assert hits and all(h["doc_id"] in {f"d{i}" for i in range(5)} for h in hits)


@pytest.mark.parametrize("value, message", [
    ("1e400", "not a finite number"),
    ("nan", "accepted: epoch seconds"),
    ("-1 day", "accepted: epoch seconds"),
])
def test_cli_search_bad_times_are_one_line(hash_ds, hash_queries, capsys, value, message):
    assert main(["search", str(hash_ds.root), "whale", f"--before={value}"]) == 2
    err = one_line_error(capsys)
    assert "--before" in err and message in err


def test_cli_search_empty_time_range(hash_ds, hash_queries, capsys):
    assert main(["search", str(hash_ds.root), "whale", "--after", "2020-01-02", "--before", "2020-01-01"]) == 2
    assert "no document can match" in one_line_error(capsys)


# -- 4. eval windows shorter than the config, and significance over few windows --------------------
def _stream(T: int):
    from relm.eval.windows import Stream

    return Stream("s", "d", np.arange(T, dtype=np.int64), np.ones(T, np.int64), np.ones(T, bool), ["doc"])


@pytest.mark.parametrize("T", [2, 3, 20, 33, 40, 63])
def test_a_stream_shorter_than_a_window_is_one_short_window_split_like_the_config(T):
    from relm.eval.windows import WindowConfig, stream_windows

    config = WindowConfig(window=64)  # 32 context + 32 scored
    (w,) = stream_windows(_stream(T), config)
    assert w.short and (w.start, w.end) == (0, T)
    assert w.n_context == max(1, T * 32 // 64) and w.n_target == T - w.n_context
    # before: T = 33 scored a single token behind the full 32-token context
    assert w.n_tokens >= T // 2


def test_a_stream_of_one_window_or_more_is_not_short():
    from relm.eval.windows import WindowConfig, stream_windows

    config = WindowConfig(window=64)
    ws = stream_windows(_stream(64), config)
    assert [(w.n_context, w.n_target, w.short) for w in ws] == [(32, 32, False)]
    ws = stream_windows(_stream(97), config)
    assert [(w.n_context, w.n_target, w.short) for w in ws] == [(32, 32, False), (32, 32, False), (32, 1, False)]


def _result(n_windows: int, gain: float = 0.5):
    """An EvalResult where retrieval lowers every scored token's NLL by about `gain` nats."""
    from relm.eval.evaluate import EvalResult, VariantRun
    from relm.eval.variants import Variant
    from relm.eval.windows import Window

    rng = np.random.default_rng(0)
    stream = _stream(64 * n_windows + 32)
    windows = [Window(i, stream, 64 * i, 64 * i + 64, 32) for i in range(n_windows)]
    base = [-(2.0 + 0.1 * rng.standard_normal(32)) for _ in windows]
    with_r = [lp + gain + 0.01 * rng.standard_normal(32) for lp in base]
    run = VariantRun(Variant("massiveds"), with_r, np.full(n_windows, 3.0), [[0, 1, 2]] * n_windows)
    return EvalResult(windows, base, np.zeros(n_windows), {"massiveds": run}, {"windows": {"window": 64}})


@pytest.mark.parametrize("n", [1, 2, 9])
def test_too_few_windows_are_never_marked_significant(n):
    vs = _result(n).summary(n_boot=200)["overall"]["massiveds"]["vs_none"]
    assert vs["windows"] == n and vs["ci_excludes_zero"]  # the (degenerate) interval does exclude zero
    assert vs["excludes_zero"] is False and "too few" in vs["note"]


def test_enough_windows_keep_the_star():
    vs = _result(12).summary(n_boot=200)["overall"]["massiveds"]["vs_none"]
    assert vs["windows"] == 12 and vs["excludes_zero"] is True and "note" not in vs


def test_cli_eval_of_one_short_document_is_reported_and_not_starred(hash_ds, tiny_lm_dir, tmp_path,
                                                                     hash_queries, capsys):
    # 25 tokens with --window 48 (24 context): this used to be one window scoring 1 token, starred
    evalf = write_jsonl(tmp_path / "tiny.jsonl", [{"id": "t", "text": make_text(3, 25)}])
    out = tmp_path / "out"
    assert main(["eval", str(hash_ds.root), str(evalf), "--lm", str(tiny_lm_dir), "--window", "48", "-k", "2",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["short_windows"] == 1 and summary["overall"]["none"]["windows"] == 1
    assert summary["overall"]["none"]["tokens"] == 25 - 25 * 24 // 48
    assert summary["overall"]["massiveds"]["vs_none"]["excludes_zero"] is False
    (rec,) = [strict_loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
    assert rec["short"] is True and rec["context"] == 12 and rec["tokens"] == 13
    table = (out / "table.md").read_text()
    assert " * |" not in table and "never starred" in table and "shorter than --window 48" in table
    assert "never starred" in capsys.readouterr().out


# -- 5. every variant's requirements, up front -----------------------------------------------------
def test_cli_eval_hybrid_without_bm25_index_fails_before_the_lm_loads(hash_ds, tmp_path, hash_queries, capsys,
                                                                      monkeypatch):
    import relm.lm

    monkeypatch.setattr(relm.lm, "load_lm", lambda *a, **k: pytest.fail("the LM was loaded"))
    evalf = write_jsonl(tmp_path / "e.jsonl", [{"text": make_text(1, 80)}])
    argv = ["eval", str(hash_ds.root), str(evalf), "--lm", "smollm2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--variants", "massiveds,hybrid"]) == 2
    assert "variant(s) hybrid need --bm25-index NAME" in one_line_error(capsys)
    assert main([*argv, "--variants", "hybrid", "--bm25-index", "nope"]) == 2
    assert "no index named 'nope'" in one_line_error(capsys)
    assert main([*argv, "--retriever", "ann"]) == 2
    assert "--retriever ann needs --index" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_evaluator_checks_variants_before_scoring(hash_ds, tiny_lm, monkeypatch):
    from relm.eval.evaluate import Evaluator
    from relm.eval.variants import Variant
    from relm.eval.windows import WindowConfig

    ev = Evaluator(hash_ds, tiny_lm, windows=WindowConfig(window=48))
    monkeypatch.setattr(ev, "score", lambda *a, **k: pytest.fail("scored before checking the variants"))
    docs = [type("D", (), {"text": make_text(1, 80), "domain": "x", "id": "a"})()]
    with pytest.raises(ConfigError, match="bm25-index"):
        ev.run([("set", docs)], [Variant("massiveds"), Variant("hybrid", retriever="hybrid")])
    with pytest.raises(ConfigError, match="distinct"):
        ev.run([("set", docs)], [Variant("massiveds"), Variant("massiveds", k=2)])


# -- 6. NaN in input JSON, and strict JSON out ------------------------------------------------------
@pytest.mark.parametrize("line, field", [
    ('{"text": "x", "title": NaN}', "title"),
    ('{"text": "x", "score": Infinity}', "score"),
    ('{"text": "x", "meta": {"w": [1, -Infinity]}}', "meta.w[1]"),
    ('{"text": "x", "timestamp": NaN}', "timestamp"),
])
def test_nan_in_jsonl_is_an_error_naming_the_line_and_field(tmp_path, line, field):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(InputError) as info:
        list(read_documents(resolve_inputs([path])))
    err = info.value
    assert (err.reason, err.line) == ("bad_json", 2)
    assert f"{path}:2:" in str(err) and f"in field {field!r}" in str(err) and "write null" in str(err)
    stats = ReadStats()
    config = ReaderConfig(on_error="skip")
    assert [d.text for d in read_documents(resolve_inputs([path], config), config, stats)] == ["ok"]
    assert stats.skipped == {"bad_json": 1}


def test_nan_in_parquet_is_read_as_null_and_counted(tmp_path, caplog):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "title": [math.nan, 2.0], "score": [1.0, math.inf],
                             "timestamp": [math.nan, 5.0]}), path)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="relm"):
        docs = list(read_documents(resolve_inputs([path]), ReaderConfig(), stats))
    assert [(d.title, d.timestamp, d.metadata) for d in docs] == [(None, None, {"score": 1.0}),
                                                                  ("2.0", 5, {"score": None})]
    assert stats.non_finite_nulled == 3 and stats.to_dict()["non_finite_nulled"] == 3
    assert "read 3 NaN/inf value(s) as null" in caplog.text


def test_search_json_is_strict_even_with_nan_in_stored_metadata(hash_ds, hash_queries, capsys, monkeypatch,
                                                                 tmp_path):
    """A datastore built before NaN was refused may still hold one: --json writes it as null."""
    from relm.datastore.store import Datastore

    real_hits = Datastore.hits

    def hits_with_nan(self, scores, ids):
        out = real_hits(self, scores, ids)
        for h in out:
            h.metadata = {"weight": math.nan, "ok": 1.5}
        return out

    monkeypatch.setattr(Datastore, "hits", hits_with_nan)
    assert main(["search", str(hash_ds.root), "whale", "-k", "2", "--json"]) == 0
    captured = capsys.readouterr()
    row = strict_loads(captured.out)
    assert [h["metadata"] for h in row["hits"]] == [{"weight": None, "ok": 1.5}] * 2
    assert "2 NaN/inf value(s) in stored metadata written as null" in captured.err
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "query": "whale"}\n')
    assert main(["search", str(hash_ds.root), "--queries", str(q), "-k", "1", "-o", str(tmp_path / "r.jsonl")]) == 0
    assert strict_loads((tmp_path / "r.jsonl").read_text())["hits"][0]["metadata"]["weight"] is None


def test_query_file_with_nan_names_the_line(hash_ds, hash_queries, capsys, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "query": "whale"}\n{"id": NaN, "query": "ship"}\n')
    assert main(["search", str(hash_ds.root), "--queries", str(q)]) == 2
    assert "q.jsonl:2: NaN is not valid JSON" in one_line_error(capsys)
