"""The LM step API and streaming generation with retrieval (relm.lm prefill/step, relm.generation)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from relm import ConfigError, GenerationConfig, agenerate_stream, generate_stream
from relm.generation import DoneEvent, RetrievalEvent, TokenEvent, event_dict
from relm.generation.text import TextStream
from relm.lm.sampling import sample_next
from relm.retrieval.options import RetrieverConfig
from relm.retrieval.retriever import Retriever

from conftest import build_hash_datastore, make_text


@pytest.fixture(scope="module")
def hash_retriever(tmp_path_factory):
    ds = build_hash_datastore(tmp_path_factory.mktemp("gen"), n_docs=60)
    return Retriever(ds, RetrieverConfig("exact"))


def full_logits(lm, ids) -> np.ndarray:
    with torch.inference_mode():
        return lm.model(torch.as_tensor(ids)[None]).logits[0, -1].float().numpy()


def run(lm, retriever, prompt, **kw):
    events = list(generate_stream(lm, retriever, prompt, GenerationConfig(**kw)))
    assert isinstance(events[-1], DoneEvent)
    return events


# -- the step API -----------------------------------------------------------------------------------------

def test_prefill_and_step_equal_a_full_forward(tiny_lm):
    ids, _ = tiny_lm.encode(make_text(3, 40))
    state = tiny_lm.prefill(ids[:25])
    np.testing.assert_allclose(state.logits, full_logits(tiny_lm, ids[:25]), atol=1e-5)
    for t in range(25, 30):
        tiny_lm.step(state, [ids[t]])
    np.testing.assert_allclose(state.logits, full_logits(tiny_lm, ids[:30]), atol=1e-5)
    tiny_lm.step(state, ids[30:])  # several tokens at once
    assert len(state) == len(ids)
    np.testing.assert_allclose(state.logits, full_logits(tiny_lm, ids), atol=1e-5)


def test_prefill_reuses_the_shared_prefix_and_leaves_the_original(tiny_lm):
    a, _ = tiny_lm.encode(make_text(1, 30))
    b = np.concatenate([a[:20], tiny_lm.encode(make_text(2, 15))[0]])
    sa = tiny_lm.prefill(a)
    sb = tiny_lm.prefill(b, reuse=sa)  # crops a copy of sa to 20 tokens, runs the rest of b
    np.testing.assert_allclose(sb.logits, full_logits(tiny_lm, b), atol=1e-5)
    assert len(sa) == len(a)  # copied, not cropped in place
    np.testing.assert_allclose(sa.logits, full_logits(tiny_lm, a), atol=1e-5)
    same = tiny_lm.prefill(a, reuse=sa)  # everything shared: only the last token is run again
    np.testing.assert_allclose(same.logits, sa.logits, atol=1e-5)
    with pytest.raises(ConfigError, match="empty"):
        tiny_lm.prefill([])
    with pytest.raises(ConfigError, match="context"):
        tiny_lm.prefill(np.full(600, 3))


def test_sample_next():
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    rng = np.random.default_rng(0)
    assert sample_next(logits, rng) == 1
    assert sample_next(np.array([1.0, 1.0]), rng) == 0  # ties: the lowest id
    assert sample_next(logits, rng, temperature=1.0, top_k=1) == 1
    assert sample_next(logits, rng, temperature=1.0, top_p=0.01) == 1
    draws = [sample_next(logits, np.random.default_rng(s), temperature=1.0, top_k=2) for s in range(400)]
    assert set(draws) == {1, 2} and 150 < draws.count(1) < 260  # p = e^3 / (e^3 + e^2.9) = 0.525


# -- text deltas and stop strings -------------------------------------------------------------------------

def test_text_stream_holds_back_a_possible_stop_string():
    vocab = ["Hello", " wor", "ld", " EN", "D", " more"]
    s = TextStream(lambda ids: "".join(vocab[i] for i in ids), stop=(" END",))
    out = [s.push(i) for i in range(5)]
    assert out == ["Hello", " wor", "ld", "", ""] and s.stopped
    assert s.finish() == "" and s.text() == "Hello world"
    s2 = TextStream(lambda ids: "".join(vocab[i] for i in ids), stop=(" END",))
    assert [s2.push(i) for i in (0, 3, 5)] == ["Hello", "", " EN more"] and not s2.stopped


def test_incomplete_characters_are_held_back():
    pieces = {0: b"caf", 1: b"\xc3", 2: b"\xa9!"}
    s = TextStream(lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace"))
    assert [s.push(i) for i in range(3)] == ["caf", "", "é!"]


# -- generation ---------------------------------------------------------------------------------------------

def test_without_retrieval_greedy_equals_transformers_generate(tiny_lm):
    prompt = make_text(5, 20)
    ids, _ = tiny_lm.encode(prompt)
    events = run(tiny_lm, None, prompt, max_new_tokens=12, stop_at_eos=False)
    with torch.inference_mode():
        ref = tiny_lm.model.generate(torch.as_tensor(ids)[None], max_new_tokens=12, do_sample=False,
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     pad_token_id=tiny_lm.eos_id, eos_token_id=None,
                                     temperature=None, top_p=None, top_k=None)
    assert list(events[-1].token_ids) == ref[0, len(ids):].tolist()
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert "".join(e.text for e in tokens) == events[-1].text


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.8, "top_k": 5,
                                                                                "top_p": 0.9, "seed": 1}])
def test_exact_mode_equals_the_naive_loop(tiny_lm, hash_retriever, sampling):
    prompt = make_text(7, 25)
    kw = dict(max_new_tokens=23, k=2, retrieve_every=5, query_tokens=8, stop_at_eos=False, **sampling)
    naive = run(tiny_lm, hash_retriever, prompt, mode="naive", **kw)
    exact = run(tiny_lm, hash_retriever, prompt, mode="exact", **kw)
    assert exact[-1].token_ids == naive[-1].token_ids
    r_naive = [(e.position, e.passage_ids) for e in naive if isinstance(e, RetrievalEvent)]
    assert r_naive == [(e.position, e.passage_ids) for e in exact if isinstance(e, RetrievalEvent)]
    assert [p for p, _ in r_naive] == [0, 5, 10, 15, 20]
    assert all(len(ids) == 2 for _, ids in r_naive)
    # exact prefilled less: the passages + context computed before were not run again
    assert exact[-1].counts["prefilled_tokens"] < naive[-1].counts["prefilled_tokens"]
    assert naive[-1].counts["reused_tokens"] == 0 and exact[-1].counts["reused_tokens"] > 0


def test_exact_mode_equals_a_plain_reference_loop(tiny_lm, hash_retriever):
    """The naive loop written out by hand: retrieve, rebuild passages + context, full forward per token."""
    from relm.eval.variants import prepend

    prompt, n, every, q = make_text(9, 18), 12, 4, 6
    context = list(tiny_lm.encode(prompt)[0])
    passages = []
    for t in range(n):
        if t % every == 0:
            query = prompt if t == 0 else tiny_lm.decode(context[-q:]).strip()
            _, ids = hash_retriever.search_ids([query], 2)
            passages = [tiny_lm.encode(hash_retriever.ds.passage(int(i)) + "\n\n")[0] for i in ids[0]]
        x = prepend(passages, np.asarray(context), tiny_lm.context_length - 1)
        context.append(int(np.argmax(full_logits(tiny_lm, x))))
    events = run(tiny_lm, hash_retriever, prompt, max_new_tokens=n, retrieve_every=every, query_tokens=q,
                 stop_at_eos=False)
    assert list(events[-1].token_ids) == context[-n:]


def test_prefetch_overlaps_retrieval_with_decoding(tiny_lm, hash_retriever):
    class SlowLM:  # decoding takes 20 ms a token, as a real LM would
        def __init__(self, lm):
            self.lm = lm

        def __getattr__(self, name):
            return getattr(self.lm, name)

        def step(self, state, ids):
            time.sleep(0.02)
            return self.lm.step(state, ids)

    class SlowRetriever:  # each search takes 60 ms
        ds = hash_retriever.ds

        def search_ids(self, texts, opts):
            time.sleep(0.06)
            return hash_retriever.search_ids(texts, opts)

    kw = dict(max_new_tokens=30, retrieve_every=6, stop_at_eos=False)
    lm = SlowLM(tiny_lm)
    seq = run(lm, SlowRetriever(), make_text(4, 20), mode="exact", **kw)[-1]
    pre = run(lm, SlowRetriever(), make_text(4, 20), mode="prefetch", check_staleness=False, **kw)[-1]
    assert pre.counts["retrievals"] == seq.counts["retrievals"] == 5
    # prefetch waited for retrieval less than retrieval took: the rest ran while the LM decoded
    assert pre.timing["retrieval_wait"] < 0.5 * (pre.timing["retrieval"] - 0.06)
    assert pre.timing["total"] < seq.timing["total"]
    assert pre.timing["total"] < pre.timing["decode"] + pre.timing["prefill"] + pre.timing["retrieval"]


def test_first_event_arrives_before_generation_ends(tiny_lm, hash_retriever):
    stream = generate_stream(tiny_lm, hash_retriever, make_text(2, 15),
                             GenerationConfig(max_new_tokens=20, stop_at_eos=False))
    first = next(stream)
    assert isinstance(first, RetrievalEvent) and first.position == 0
    token = next(stream)
    assert isinstance(token, TokenEvent) and token.index == 0
    rest = list(stream)
    assert isinstance(rest[-1], DoneEvent) and len(rest[-1].token_ids) == 20
    assert event_dict(rest[-1])["type"] == "done"


def test_async_stream_equals_the_sync_one(tiny_lm, hash_retriever):
    config = GenerationConfig(max_new_tokens=10, stop_at_eos=False)

    async def collect():
        return [e async for e in agenerate_stream(tiny_lm, hash_retriever, make_text(6, 12), config)]

    events = asyncio.run(collect())
    sync = list(generate_stream(tiny_lm, hash_retriever, make_text(6, 12), config))
    assert [type(e) for e in events] == [type(e) for e in sync]
    assert events[-1].token_ids == sync[-1].token_ids

    async def stop_early():
        async for e in agenerate_stream(tiny_lm, hash_retriever, make_text(6, 12), config):
            if isinstance(e, TokenEvent):
                return e
    assert isinstance(asyncio.run(stop_early()), TokenEvent)  # leaving early cancels cleanly


def test_citations_cover_the_tokens_each_passage_set_was_in_context_for(tiny_lm, hash_retriever):
    done = run(tiny_lm, hash_retriever, make_text(8, 20), max_new_tokens=17, retrieve_every=5,
               stop_at_eos=False)[-1]
    spans = [(c["start"], c["end"]) for c in done.citations]
    assert spans[0][0] == 0 and spans[-1][1] == 17
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous, no gaps
    assert done.counts["retrievals"] == 4 and len(done.citations) == 1 + done.counts["changed_sets"]


def test_stop_string_ends_the_text(tiny_lm):
    free = run(tiny_lm, None, make_text(5, 20), max_new_tokens=12, stop_at_eos=False)[-1]
    words = free.text.split()
    stop = words[3]
    done = run(tiny_lm, None, make_text(5, 20), max_new_tokens=12, stop_at_eos=False, stop=(stop,))[-1]
    assert done.finish_reason == "stop" and stop not in done.text
    assert free.text.startswith(done.text)


def test_a_template_puts_the_passages_where_it_says(tiny_lm, hash_retriever):
    from relm.generation.config import render_prompt

    template = "Excerpts:\n{passages}\nQ: {prompt}\nA:"
    assert render_prompt(template, "why?", ["a  b", "c"]) == "Excerpts:\n[1] a b\n\n[2] c\nQ: why?\nA:"
    prompt = make_text(4, 10)
    kw = dict(max_new_tokens=9, k=2, retrieve_every=4, stop_at_eos=False, template=template)
    naive = run(tiny_lm, hash_retriever, prompt, mode="naive", **kw)
    exact = run(tiny_lm, hash_retriever, prompt, mode="exact", **kw)
    assert exact[-1].token_ids == naive[-1].token_ids
    first = next(e for e in naive if isinstance(e, RetrievalEvent))
    assert first.query == prompt  # the question, not the template, is the first query
    # the reference: the rendered template with the first passages, then the new tokens, greedy
    ids = list(tiny_lm.encode(render_prompt(template, prompt, first.texts))[0])
    for _ in range(4):
        ids.append(int(np.argmax(full_logits(tiny_lm, ids))))
    assert list(naive[-1].token_ids[:4]) == ids[-4:]
    asked = list(generate_stream(tiny_lm, hash_retriever, prompt, GenerationConfig(**kw), query="whale ship"))
    assert next(e for e in asked if isinstance(e, RetrievalEvent)).query == "whale ship"
    for bad in ("no fields", "{prompt} {other}", "{passages} only", "{prompt"):
        with pytest.raises(ConfigError, match="template"):
            GenerationConfig(template=bad)


def test_chat_text_falls_back_to_the_prompt_without_a_template():
    from relm.lm.base import chat_text

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<user>{messages[0]['content']}</user><assistant>"

    assert chat_text(type("LM", (), {"tokenizer": Chat()})(), "hi") == "<user>hi</user><assistant>"
    assert chat_text(type("LM", (), {"tokenizer": object()})(), "hi") == "hi"


def test_bad_input(tiny_lm, hash_retriever):
    with pytest.raises(ConfigError, match="prompt is empty"):
        list(generate_stream(tiny_lm, hash_retriever, "  "))
    with pytest.raises(ConfigError, match="context"):
        list(generate_stream(tiny_lm, hash_retriever, make_text(1, 700)))
    for bad in ({"k": 0}, {"retrieve_every": 0}, {"max_new_tokens": 0}, {"mode": "fast"}, {"top_p": 2},
                {"stop": ("",)}):
        with pytest.raises(ConfigError):
            GenerationConfig(**bad)


# -- the CLI ---------------------------------------------------------------------------------------------

def test_relm_generate_streams_then_cites(tiny_lm_dir, hash_retriever, capsys, tmp_path):
    import json

    from relm.cli import main

    ds = str(hash_retriever.ds.root)
    assert main(["-q", "index", ds, "--name", "bm", "--bm25"]) == 0
    capsys.readouterr()
    common = ["--lm", str(tiny_lm_dir), "--retriever", "bm25", "--index", "bm", "--max-new-tokens", "12",
              "--retrieve-every", "4", "--ignore-eos"]
    assert main(["generate", ds, make_text(3, 12), *common]) == 0
    out = capsys.readouterr()
    assert "passages in context:" in out.out and "tokens [0, " in out.out
    assert "3 retrievals" in out.err
    assert main(["generate", ds, make_text(3, 12), *common, "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "retrieval" and events[-1]["type"] == "done"
    assert sum(e["type"] == "token" for e in events) >= 12
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(make_text(1, 10) + "\n" + make_text(2, 10) + "\n")
    assert main(["generate", ds, "--prompts", str(prompts), "-o", str(tmp_path / "out.jsonl"), *common]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2"] and all(len(r["retrievals"]) == 3 for r in rows)
    template = tmp_path / "qa.txt"
    template.write_text("Excerpts:\n{passages}\nQuestion: {prompt}\nAnswer:")
    assert main(["generate", ds, make_text(3, 12), *common, "--template", str(template), "--chat", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["query"] == make_text(3, 12) and events[-1]["counts"]["new_tokens"] == 12
    assert main(["generate", ds, make_text(3, 12), *common, "--no-retrieval", "--json"]) == 0
    assert all(json.loads(line)["type"] != "retrieval" for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize("argv, message", [
    (["-k", "0"], "k (-k)"), (["--retrieve-every", "0"], "retrieve_every"), (["--top-p", "3"], "top_p"),
    (["--template", "missing.txt"], "--template 'missing.txt': no such file"),
    (["--template", "{prompt} {x}"], "template (--template) must contain"),
])
def test_relm_generate_bad_flags_are_one_line(argv, message, tiny_lm_dir, hash_retriever, capsys):
    from relm.cli import main

    assert main(["generate", str(hash_retriever.ds.root), "hello", "--lm", str(tiny_lm_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- RETRO through the same loop -------------------------------------------------------------------------

@pytest.mark.parametrize("fusion,temperature", [("retro", 0.0), ("relm", 0.0)])
def test_retro_models_generate_through_the_same_stream(fusion, temperature):
    from relm.retro.lm import RetroLM
    from test_retro_model import M, V, make_retrieve, tiny_config, trained_like

    class IdTokenizer:  # token ids written as words
        eos_id = None

        def encode(self, text):
            ids = [int(w) for w in text.split()]
            return ids, [(0, 0)] * len(ids)

        def decode(self, ids):
            return " ".join(str(i) for i in ids)

    model = trained_like(tiny_config(fusion=fusion))
    prompt = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(2))
    ref = model.generate(prompt, 14, retrieve=make_retrieve(fusion, []))
    lm = RetroLM(model, IdTokenizer(), make_retrieve(fusion, []))
    done = run(lm, None, " ".join(map(str, prompt[0].tolist())), max_new_tokens=14, temperature=temperature)[-1]
    assert list(done.token_ids) == ref[0, 6:].tolist()
    assert lm.chunks_retrieved == (6 + 13) // M  # one retrieval per completed chunk, as RetroModel.generate


# -- adaptive retrieval -------------------------------------------------------------------------------------

def test_adaptive_k_math():
    from relm.generation.adaptive import AdaptiveK, k_from_nll, span_means, token_nll

    assert [k_from_nll(x, (1.0, 2.0)) for x in (0.5, 1.5, 2.5)] == [0, 1, 2]
    np.testing.assert_allclose(span_means(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.5, 2.5, 3.5])
    logits = np.array([1.0, 2.0, 3.0])
    assert token_nll(logits, 2) == pytest.approx(-np.log(np.exp(3) / np.exp(logits).sum()))
    a = AdaptiveK((1.0, 2.0), span=3)
    assert a.k_max == 2 and a.choose([]) == 2 and a.choose([5.0, 0.1, 0.1, 0.1]) == 0
    assert a.choose([0.1, 5.0, 0.1, 0.1]) == 1  # the mean of the last span (3) tokens: 1.73
    with pytest.raises(ConfigError, match="ascending"):
        AdaptiveK((2.0, 1.0))


def test_calibrated_thresholds_split_held_out_spans(tiny_lm, tmp_path):
    from relm.generation.adaptive import AdaptiveK, calibrate

    a = calibrate(tiny_lm, [make_text(i, 120) for i in range(4)], k_max=2, span=5, window=64, source="test")
    assert a.k_max == 2 and a.thresholds[0] <= a.thresholds[1] and a.span == 5
    a.save(tmp_path / "a.json")
    assert AdaptiveK.load(tmp_path / "a.json") == a
    with pytest.raises(ConfigError, match="calibrate-adaptive"):
        AdaptiveK.load(tmp_path / "missing.json")


def test_adaptive_generation_skips_when_confident(tiny_lm, hash_retriever):
    from relm.generation.adaptive import AdaptiveK

    prompt = make_text(7, 25)
    kw = dict(max_new_tokens=21, k=2, retrieve_every=5, stop_at_eos=False)
    never = run(tiny_lm, hash_retriever, prompt, adaptive=AdaptiveK((1e9, 1e9)), **kw)[-1]
    once = run(tiny_lm, hash_retriever, prompt, **{**kw, "retrieve_every": 1000})[-1]
    assert never.counts["retrievals"] == 1 and never.counts["skipped_retrievals"] == 4
    assert never.token_ids == once.token_ids  # skipping keeps the first passages, as one retrieval would
    always = run(tiny_lm, hash_retriever, prompt, adaptive=AdaptiveK((-1e9, -1e9)), **kw)
    fixed = run(tiny_lm, hash_retriever, prompt, **kw)
    assert always[-1].token_ids == fixed[-1].token_ids
    assert [e.k for e in always if isinstance(e, RetrievalEvent)] == [None, 2, 2, 2, 2]
    one = run(tiny_lm, hash_retriever, prompt, adaptive=AdaptiveK((-1e9, 1e9)), **kw)
    assert all(len(e.passage_ids) == 1 for e in one if isinstance(e, RetrievalEvent) and e.position > 0)


def test_relm_generate_adaptive_k_from_calibrated_thresholds(tiny_lm_dir, hash_retriever, capsys, tmp_path):
    import json

    from relm.cli import main

    ds = str(hash_retriever.ds.root)
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": make_text(i, 150)}) + "\n" for i in range(3)))
    main(["-q", "index", ds, "--name", "bm", "--bm25"])
    assert main(["generate", ds, "--calibrate-adaptive", str(held), "-o", str(tmp_path / "a.json"),
                 "--lm", str(tiny_lm_dir), "-k", "2", "--retrieve-every", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", ds, make_text(3, 12), "--lm", str(tiny_lm_dir), "--retriever", "bm25", "--index",
                 "bm", "--max-new-tokens", "16", "--retrieve-every", "4", "--ignore-eos", "--json",
                 "--adaptive-k", str(tmp_path / "a.json")]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ks = [e["k"] for e in events if e["type"] == "retrieval"]
    assert ks[0] is None and all(k in (0, 1, 2) for k in ks[1:]) and len(ks) == 4
    assert main(["generate", ds, "x", "--lm", str(tiny_lm_dir), "--adaptive-k", str(tmp_path / "no.json")]) == 2
    assert "calibrate-adaptive" in capsys.readouterr().err


def test_ctrl_c_prints_what_was_generated_and_exits_cleanly(tiny_lm_dir, hash_retriever):
    import os
    import signal
    import subprocess
    import sys

    from relm.cli import main

    ds = str(hash_retriever.ds.root)
    main(["-q", "index", ds, "--name", "bm", "--bm25"])
    proc = subprocess.Popen([sys.executable, "-m", "relm", "generate", ds, make_text(3, 12), "--lm", str(tiny_lm_dir),
                             "--retriever", "bm25", "--index", "bm", "--max-new-tokens", "1000000", "--ignore-eos"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    first = proc.stdout.read(1)  # the stream has started
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert first and proc.returncode == 130
    assert b"interrupted after" in err and b"Traceback" not in err
