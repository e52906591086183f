"""Retrieval-augmented evaluation on a tiny random Llama and a hash-encoded datastore."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relm import ConfigError
from relm.corpus.documents import Document
from relm.eval.evaluate import Evaluator
from relm.eval.filters import PassageFilter
from relm.eval.variants import Variant, k_from_query_loss, parse_variants, prepend, ralm_blocks
from relm.eval.windows import WindowConfig, make_windows, pack_streams
from relm.lm import ScoreRequest
from test_lm import reference_logprobs

from conftest import build_hash_datastore, make_text


def docs(n: int = 4, words: int = 90, domain: str = "alpha") -> list[Document]:
    return [Document(id=f"e{i}", text=make_text(100 + i, words + 11 * i) + " é", domain=domain,
                     source="test")
            for i in range(n)]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return build_hash_datastore(tmp_path_factory.mktemp("evalds"), n_docs=60)


@pytest.fixture(scope="module")
def eval_sets():
    return [("set", docs() + docs(2, 60, "beta"))]


# -- pure pieces -------------------------------------------------------------------------------------
def test_windows_score_every_token_once(tiny_lm):
    streams = pack_streams(docs(), tiny_lm, set_name="s")
    assert len(streams) == 1 and streams[0].nbytes.sum() == sum(len(d.text.encode()) for d in docs())
    st = streams[0]
    assert (~st.scorable).sum() == 3 and (st.ids[~st.scorable] == tiny_lm.eos_id).all()  # separators
    ws = make_windows(streams, WindowConfig(window=64))
    covered = np.zeros(len(st.ids), int)
    for w in ws:
        assert len(w.ids) == 64 or w is ws[-1]
        assert len(w.context_ids) == 32 and w.n_target <= 32
        covered[w.end - w.n_target : w.end] += 1
    assert (covered[32:] == 1).all() and (covered[:32] == 0).all()
    assert sum(w.n_bytes for w in ws) == st.nbytes[32:].sum()
    capped = make_windows(streams, WindowConfig(window=64, max_windows=3))
    assert len(capped) == 3 and capped[0].start == ws[0].start and capped[-1].end == ws[-1].end


def test_window_config_errors():
    with pytest.raises(ConfigError, match="stride"):
        WindowConfig(window=16, stride=16)
    with pytest.raises(ConfigError, match="window"):
        WindowConfig(window=1)


def test_k_from_query_loss_follows_query_loss():
    k = k_from_query_loss(np.array([0.5, 3.0, 1.0, 2.0, 0.1, 5.0]), 2)
    assert k.tolist() == [0, 2, 1, 1, 0, 2]
    assert k_from_query_loss(np.array([1.0]), 3).tolist() == [0] and len(k_from_query_loss(np.zeros(0), 3)) == 0


def test_prepend_best_last_and_left_truncation():
    p1, p2, text = np.array([1, 1]), np.array([2, 2, 2]), np.array([9, 9])
    assert prepend([p1, p2], text, 100).tolist() == [2, 2, 2, 1, 1, 9, 9]
    assert prepend([p1, p2], text, 5).tolist() == [2, 1, 1, 9, 9]
    with pytest.raises(ConfigError, match="window"):
        prepend([p1], np.arange(10), 5)
    assert ralm_blocks(32, 70, 32) == [(32, 64), (64, 96), (96, 102)]


def test_variants_parse_and_validate():
    vs = parse_variants("massiveds,last-q,rerank,adaptive,ralm", k=2, query_tokens=8, stride=16, rerank=4)
    assert [v.name for v in vs] == ["massiveds", "last-q", "rerank", "adaptive", "ralm"]
    assert vs[2].rerank == 4 and vs[4].stride == 16 and vs[4].k == 1
    with pytest.raises(ConfigError, match="unknown variant"):
        parse_variants("nope")
    with pytest.raises(ConfigError, match="rerank"):
        Variant("x", k=3, rerank=2)


# -- the evaluator ---------------------------------------------------------------------------------
def test_baseline_scores_exactly_the_second_half(ds, tiny_lm, eval_sets):
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    res = ev.run(eval_sets, [Variant("massiveds", k=2)])
    for w, lp in zip(res.windows[:5], res.baseline[:5], strict=True):
        assert len(lp) == w.n_target
        np.testing.assert_allclose(lp, reference_logprobs(tiny_lm, w.ids, w.n_target), rtol=1e-5, atol=1e-5)
    summary = res.summary(n_boot=50)
    none = summary["overall"]["none"]
    nll = -sum(lp[w.target_mask].sum() for w, lp in zip(res.windows, res.baseline, strict=True))
    nbytes = sum(w.n_bytes for w in res.windows)
    assert none["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes)
    assert set(summary["groups"]) == {"set/alpha", "set/beta"}
    assert summary["overall"]["massiveds"]["mean_k"] == pytest.approx(2.0)
    records = list(res.window_records())
    assert len(records) == len(res.windows) and len(records[0]["massiveds"]["passages"]) == 2


def test_retrieval_input_is_passages_then_window(ds, tiny_lm, eval_sets):
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    res = ev.run(eval_sets, [Variant("massiveds", k=2)])
    w, chosen = res.windows[3], res.runs["massiveds"].passages[3]
    ids = np.concatenate([ev.passage_ids(chosen[1]), ev.passage_ids(chosen[0]), w.ids])
    np.testing.assert_allclose(res.runs["massiveds"].logprobs[3], reference_logprobs(tiny_lm, ids, w.n_target),
                               rtol=1e-5, atol=1e-5)


def test_batched_equals_one_window_at_a_time(ds, tiny_lm, eval_sets):
    variants = [Variant("massiveds", k=2), Variant("ralm", protocol="ralm", k=1, query="last", stride=8),
                Variant("adaptive", k=2, adaptive=True)]
    batched = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48)).run(eval_sets, variants)
    single = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48), batch_size=1).run(eval_sets, variants)
    a, b = batched.summary(n_boot=10), single.summary(n_boot=10)
    for cond in ("none", "massiveds", "ralm", "adaptive"):
        assert a["overall"][cond]["perplexity"] == pytest.approx(b["overall"][cond]["perplexity"], rel=1e-6)
    assert batched.runs["ralm"].k.tolist() == [1.0] * len(batched.windows)
    ks = batched.runs["adaptive"].k
    assert set(ks.tolist()) <= {0.0, 1.0, 2.0} and 0 < ks.mean() < 2


def test_decontamination_removes_a_planted_copy(ds, tiny_lm, monkeypatch):
    """A passage that repeats the scored text verbatim is retrieved first, and filtered out."""
    planted = make_text(7, 40)
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48), filters=PassageFilter(dedup=False))
    monkeypatch.setattr(ev, "passage_text", lambda i: planted if i == 0 else ds.passage(i))
    scored = [planted]
    real = ev.search
    monkeypatch.setattr(ev, "search", lambda kind, q, k: (None, np.array([[0, 5, 6, 7, 8, 9]])[:, :k])
                        if q else real(kind, q, k))
    chosen, removed = ev.retrieve(Variant("v", k=2), ["query"], scored, 2)
    assert chosen == [[5, 6]] and removed["decontamination_jaccard"] + removed["decontamination_shared_run"] == 1
    off = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48),
                    filters=PassageFilter(decontaminate=False, dedup=False))
    monkeypatch.setattr(off, "passage_text", lambda i: planted if i == 0 else ds.passage(i))
    monkeypatch.setattr(off, "search", lambda kind, q, k: (None, np.array([[0, 5, 6, 7, 8, 9]])[:, :k]))
    assert off.retrieve(Variant("v", k=2), ["query"], scored, 2)[0] == [[0, 5]]


def test_rerank_orders_by_lm_logprob(ds, tiny_lm, eval_sets):
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    windows = ev.windows(eval_sets)[:3]
    v = Variant("r", k=2, query="last", query_tokens=8, rerank=4)
    chosen = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    ranked = ev.rerank(v, windows, chosen)
    for w, cand, order in zip(windows, chosen, ranked, strict=True):
        assert sorted(order) == cand
        ctx = w.context_ids
        lp = [reference_logprobs(tiny_lm, np.concatenate([ev.passage_ids(p), ctx]), 8).sum() for p in order]
        assert lp == sorted(lp, reverse=True)


def test_window_longer_than_context(ds, tiny_lm):
    with pytest.raises(ConfigError, match="context"):
        Evaluator(ds, tiny_lm, windows=WindowConfig(window=1024))


def test_eval_queries_keep_their_end_by_default(ds, tiny_lm, eval_sets, monkeypatch):
    """Eval queries (the window's context) are left-truncated to the encoder by default: the encoder is
    asked for truncate="left" and the summary's retriever config says so; "right" is still available."""
    from relm.retrieval.options import RetrieverConfig

    from conftest import HashEncoder

    seen = []

    class Recording(HashEncoder):
        def encode(self, texts, *, truncate="right", **kw):
            seen.append(truncate)
            return super().encode(texts, truncate=truncate, **kw)

    monkeypatch.setattr(ds, "_encoder", Recording())
    variants = [Variant("massiveds", k=2), Variant("last-q", k=2, query="last", query_tokens=8)]
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    summary = ev.run(eval_sets, variants).summary()
    assert seen and set(seen) == {"left"}
    assert summary["settings"]["retriever"]["query_truncation"] == "left"
    seen.clear()
    old = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48), query_truncation="right")
    assert old.run(eval_sets, variants).summary()["settings"]["retriever"]["query_truncation"] == "right"
    assert seen and set(seen) == {"right"}
    with pytest.raises(ConfigError, match="query_truncation"):
        Evaluator(ds, tiny_lm, query_truncation="middle")
    assert RetrieverConfig().query_truncation == "right"  # relm search keeps the encoder's own behaviour


# -- CLI ---------------------------------------------------------------------------------------------
@pytest.fixture
def hash_queries(monkeypatch):
    from relm.datastore.store import Datastore

    from conftest import HashEncoder

    monkeypatch.setattr(Datastore, "encoder", lambda self: HashEncoder())


def test_cli_eval_writes_summary_windows_table_plot(ds, tiny_lm_dir, tmp_path, hash_queries, capsys):
    import json

    from relm.cli import main

    from conftest import write_jsonl

    evalf = write_jsonl(tmp_path / "heldout.jsonl",
                        [{"id": d.id, "text": d.text, "domain": d.domain} for d in docs() + docs(2, 60, "beta")])
    out = tmp_path / "out"
    code = main(["eval", str(ds.root), str(evalf), "--lm", str(tiny_lm_dir), "--window", "48", "-k", "2",
                 "--variants", "massiveds,last-q,adaptive,ralm,rerank", "--rerank-candidates", "3",
                 "--query-tokens", "8", "--ralm-stride", "8", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["overall"]) == {"none", "massiveds", "last-q", "adaptive", "ralm", "rerank"}
    assert set(summary["groups"]) == {"heldout/alpha", "heldout/beta"}
    assert summary["variants"]["ralm"]["stride"] == 8 and summary["settings"]["windows"]["window"] == 48
    lines = (out / "windows.jsonl").read_text().splitlines()
    assert len(lines) == summary["settings"]["n_windows"]
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| overall | massiveds |" in printed and "bits/byte" in printed
    assert "Δ ppl vs massiveds" in printed and "| overall | ralm |" in printed
    assert summary["reference"] == "massiveds" and "vs_reference" in summary["overall"]["ralm"]
    assert summary["settings"]["retriever"]["query_truncation"] == "left"  # the eval default


@pytest.mark.parametrize("extra, message", [
    (["--window", "4096"], "context"),
    (["--variants", "bogus"], "unknown variant"),
    (["--variants", "hybrid"], "bm25-index"),
])
def test_cli_eval_bad_input(ds, tiny_lm_dir, tmp_path, hash_queries, capsys, extra, message):
    from relm.cli import main

    from conftest import write_jsonl

    evalf = write_jsonl(tmp_path / "e.jsonl", [{"id": "a", "text": make_text(1, 80)}])
    assert main(["eval", str(ds.root), str(evalf), "--lm", str(tiny_lm_dir), "--window", "48",
                 "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_eval_missing_or_empty_inputs(ds, tiny_lm_dir, tmp_path, hash_queries, capsys):
    from relm.cli import main

    assert main(["eval", str(ds.root), str(tmp_path / "nope.jsonl"), "--lm", str(tiny_lm_dir)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["eval", str(ds.root), str(tmp_path / "empty.jsonl"), "--lm", str(tiny_lm_dir)]) == 2
    assert "empty" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "text": "retrieval datastore passage encoder"}\n')
    assert main(["eval", str(ds.root), str(good), "--lm", str(tmp_path / "nolm")]) == 2
    assert "not found" in capsys.readouterr().err


def test_ralm_merges_blocks_with_the_same_passages(ds, tiny_lm, eval_sets):
    from relm.eval.evaluate import merge_blocks

    blocks = [(0, 32, 40), (0, 40, 48), (0, 48, 56), (1, 32, 40), (1, 40, 48)]
    chosen = [[5], [5], [6], [6], [6]]
    assert merge_blocks(blocks, chosen) == [(0, 32, 48, [5]), (0, 48, 56, [6]), (1, 32, 48, [6])]
    # merged inputs score exactly what block-by-block inputs score
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    windows = ev.windows(eval_sets)[:4]
    v = Variant("ralm", protocol="ralm", k=1, query="last", query_tokens=8, stride=4)
    run = ev._run_ralm(v, windows, 0.0)
    w, lp = windows[2], run.logprobs[2]
    c0 = run.passages[2][0]
    one = reference_logprobs(tiny_lm, np.concatenate([ev.passage_ids(c0), w.ids[:28]]), 4)
    np.testing.assert_allclose(lp[:4], one, rtol=1e-5, atol=1e-5)


def test_ralm_stale_queries_and_online_k(ds, tiny_lm, eval_sets, monkeypatch):
    """ralm-stale queries with the tokens one stride back (after each window's first block); ralm-adaptive
    decides k per block from the no-retrieval NLL before it: thresholds no NLL reaches give k = 0 (the
    no-retrieval scores), thresholds every NLL exceeds give the fixed-k ralm scores."""
    from relm.generation.adaptive import AdaptiveK

    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    windows = ev.windows(eval_sets)[:3]
    seen = []
    real = ev._query_text
    monkeypatch.setattr(ev, "_query_text", lambda ids, v: seen.append(len(ids)) or real(ids, v))
    table = parse_variants("ralm,ralm-stale", k=1, query_tokens=8, stride=8)
    full = ev.score([ScoreRequest(w.ids, len(w.ids) - 1) for w in windows])
    ev._run_ralm(table[0], windows, 0.0, full)
    fresh = list(seen)
    seen.clear()
    ev._run_ralm(table[1], windows, 0.0, full)
    assert seen[0] == fresh[0] and all(s == f - 8 for s, f in zip(seen[1:3], fresh[1:3], strict=True))
    online = parse_variants("ralm-adaptive", k=1, query_tokens=8, stride=8, online=AdaptiveK((1e9,)))[0]
    none = ev._run_ralm(online, windows, 0.0, full)
    assert none.seconds["retrievals"] == 0 and none.k.tolist() == [0.0] * 3
    for lp, w, f in zip(none.logprobs, windows, full, strict=True):
        np.testing.assert_allclose(lp, f[-w.n_target:], atol=1e-6)
    always = parse_variants("ralm-adaptive", k=1, query_tokens=8, stride=8, online=AdaptiveK((-1e9,)))[0]
    a, b = ev._run_ralm(always, windows, 0.0, full), ev._run_ralm(table[0], windows, 0.0, full)
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    with pytest.raises(ConfigError, match="--adaptive-k"):
        parse_variants("ralm-adaptive")
