"""`relm serve`: every endpoint in-process (httpx over ASGI, hash-encoded datastore, the tiny LM), then one
real server process for the openai client, client disconnects and `relm add` while serving."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from relm.generation import GenerationConfig, generate_stream
from relm.retrieval.options import SearchOptions
from relm.serve import ServeConfig, ServerState, create_app
from relm.serve.batching import _Request, take_group
from relm.serve.security import check_bind, key_matches

from conftest import build_hash_datastore, make_text

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def hds(tmp_path_factory):
    return build_hash_datastore(tmp_path_factory.mktemp("serve"), n_docs=60)


def make_state(hds, lm=None, *, key=None, load=True, **config) -> ServerState:
    retriever = config.pop("retriever", {"kind": "exact", "cache_bytes": 1 << 20})
    state = ServerState(ServeConfig(str(hds.root), retriever=retriever, lm=None, **config), datastore=hds, lm=lm,
                        api_key=key)
    if load:
        state.load()
    return state


def client(state, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state, **kw), raise_app_exceptions=False), base_url="http://relm")


def call(state, method, path, *, headers=None, **kw) -> httpx.Response:
    async def go():
        async with client(state) as c:
            return await c.request(method, path, headers=headers, **kw)

    return asyncio.run(go())


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event."""
    out = []
    for block in text.strip().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((name, "\n".join(data)))
    return out


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == r.status_code
    assert "Traceback" not in r.text and "\n" not in body["error"]["message"]
    return body["error"]["message"]


# -- pure pieces ------------------------------------------------------------------------------------------

def test_take_group_keeps_keys_apart_and_bounds_the_batch():
    loop = asyncio.new_event_loop()
    f = loop.create_future
    reqs = [_Request("a", ["1", "2"], f()), _Request("b", ["3"], f()), _Request("a", ["4"], f()),
            _Request("a", ["5", "6", "7"], f())]
    group, rest = take_group(reqs, max_batch=3)
    assert [r.texts for r in group] == [["1", "2"], ["4"]] and [r.key for r in rest] == ["b", "a"]
    group, rest = take_group([_Request("a", list("abcdef"), f())], max_batch=2)  # too big: goes alone
    assert len(group) == 1 and rest == []
    loop.close()


def test_bind_rule_and_constant_time_key():
    check_bind("127.0.0.1", None, False)
    check_bind("::1", None, False)
    with pytest.raises(Exception, match="--api-key"):
        check_bind("0.0.0.0", None, False)
    check_bind("0.0.0.0", KEY, False)
    check_bind("0.0.0.0", None, True)
    assert key_matches(KEY, KEY) and not key_matches(KEY[:-1], KEY) and not key_matches(None, KEY)


# -- search -----------------------------------------------------------------------------------------------

def test_search_one_query_and_a_batch_equal_the_retriever(hds):
    state = make_state(hds)
    query = make_text(5, 8)
    r = call(state, "POST", "/search", json={"query": query, "k": 4, "domains": ["alpha", "beta"]})
    assert r.status_code == 200, r.text
    direct = state.retriever().search([query], SearchOptions(k=4, domains=("alpha", "beta")))[0]
    body = r.json()
    assert body["retriever"] == "exact" and [h["passage_id"] for h in body["hits"]] == [h.passage_id for h in direct]
    hit = body["hits"][0]
    assert {"passage_id", "score", "text", "doc_id", "domain", "metadata", "timestamp"} <= set(hit)
    assert hit["domain"] in ("alpha", "beta") and abs(hit["score"] - direct[0].score) < 1e-6
    queries = [make_text(i, 8) for i in range(5)]
    r = call(state, "POST", "/search", json={"queries": queries, "k": 3, "threshold": -1.0})
    results = r.json()["results"]
    assert [x["query"] for x in results] == queries and all(len(x["hits"]) == 3 for x in results)
    alone = call(state, "POST", "/search", json={"query": queries[0], "k": 3}).json()["hits"]
    assert same_hits([results[0]["hits"]], [alone])


def test_concurrent_searches_are_batched_and_each_gets_what_it_gets_alone(hds):
    state = make_state(hds, batch_window_ms=30, max_batch=64)
    requests = [{"query": make_text(i, 6 + i % 4), "k": 2 + i % 3} for i in range(24)]
    requests += [{"queries": [make_text(100 + i, 7), make_text(200 + i, 5)], "k": 3, "domains": ["gamma"]}
                 for i in range(6)]

    async def together():
        async with client(state) as c:
            return await asyncio.gather(*(c.post("/search", json=q) for q in requests))

    answers = asyncio.run(together())
    assert all(a.status_code == 200 for a in answers)
    batches = state.metrics.batch_requests.collect()[0].samples
    n_calls = next(s.value for s in batches if s.name.endswith("_count"))
    assert n_calls <= 6, f"{len(requests)} concurrent requests took {n_calls} retriever calls"  # one per k/filter
    state.retriever().cache.clear()
    for q, a in zip(requests, answers, strict=True):
        texts = [q["query"]] if "query" in q else q["queries"]
        alone = state.retriever().search(texts, SearchOptions(k=q["k"], domains=tuple(q.get("domains", ()))))
        got = [a.json()["hits"]] if "query" in q else [x["hits"] for x in a.json()["results"]]
        assert same_hits(got, [[h.to_dict() for h in hits] for hits in alone])


def same_hits(a: list[list[dict]], b: list[list[dict]]) -> bool:
    """The same passages in the same order with the same fields; scores equal up to float32 rounding (a
    (1, d) x (d, n) product and a row of an (nq, d) x (d, n) one sum in different orders: 1 ulp, ~3e-8)."""
    strip = lambda rows: [[{k: v for k, v in h.items() if k != "score"} for h in hits] for hits in rows]  # noqa: E731
    scores = lambda rows: [h["score"] for hits in rows for h in hits]  # noqa: E731
    return strip(a) == strip(b) and all(abs(x - y) <= 1e-6 for x, y in zip(scores(a), scores(b), strict=True))


@pytest.mark.parametrize("body, status, message", [
    ({"query": "x y", "k": 5000}, 422, "k = 5,000 exceeds this server's limit of 1,000 (--max-k)"),
    ({"query": "x y", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"query": "x y", "kk": 3}, 422, "kk: Extra inputs are not permitted"),
    ({"query": "   "}, 422, "empty query"),
    ({"query": "a", "queries": ["b"]}, 422, "give either 'query'"),
    ({}, 422, "give either 'query'"),
    ({"queries": ["q"] * 300}, 422, "the number of queries = 300 exceeds this server's limit of 256"),
    ({"query": "x", "after": "2020-01-01", "before": "2019-01-01"}, 422, "must be earlier than before"),
    ({"query": "x", "retriever": "nope"}, 422, "unknown retriever 'nope'"),
    ({"query": "x", "retriever": "bm25"}, 422, "retriever 'bm25' cannot be served here"),
    ({"query": "x", "adaptive": {"max_drop": -1}}, 422, "adaptive max_drop"),
])
def test_bad_search_requests_get_one_line_errors(hds, body, status, message):
    r = call(make_state(hds), "POST", "/search", json=body)
    assert r.status_code == status and message in error_of(r), r.text


def test_malformed_oversized_unknown_and_internal_errors(hds):
    state = make_state(hds, max_body_bytes=2000)
    r = call(state, "POST", "/search", content=b'{"query": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in error_of(r)
    r = call(state, "POST", "/search", json={"query": "x " * 2000})
    assert r.status_code == 413 and "--max-body-bytes" in error_of(r)

    async def chunked():  # no Content-Length: counted as it arrives
        yield b'{"query": "'
        for _ in range(50):
            yield b"word " * 20
        yield b'"}'

    r = call(state, "POST", "/search", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit of 2,000 bytes" in error_of(r)
    assert call(state, "GET", "/nowhere").status_code == 404
    assert call(state, "GET", "/search").status_code == 405

    def broken(key, texts):
        raise RuntimeError("secret internals /home/x")

    state.search_rows = broken  # the batcher calls this: a bug, not a user error
    r = call(state, "POST", "/search", json={"query": "x"})
    assert r.status_code == 500 and error_of(r) == "internal error (logged on the server)"
    assert "secret" not in r.text


def test_search_timeout_fires(hds):
    state = make_state(hds, timeout_s=0.2)
    slow = state.search_rows
    state.search_rows = lambda key, texts: (time.sleep(1.0), slow(key, texts))[1]
    t0 = time.perf_counter()
    r = call(state, "POST", "/search", json={"query": "x"})
    assert r.status_code == 504 and "--timeout" in error_of(r) and time.perf_counter() - t0 < 0.9


def test_api_key_on_every_endpoint_but_health(hds):
    state = make_state(hds, key=KEY)
    for method, path, body in [("POST", "/search", {"query": "x"}), ("GET", "/info", None), ("GET", "/metrics", None),
                               ("POST", "/generate", {"prompt": "x"}), ("POST", "/v1/completions", {"prompt": "x"})]:
        for headers in (None, {"Authorization": "Bearer wrong-key-0000"}, {"X-API-Key": KEY[:-1]}):
            r = call(state, method, path, json=body, headers=headers)
            assert r.status_code == 401 and "API key" in error_of(r), (path, headers)
    assert call(state, "GET", "/health").status_code == 200
    assert call(state, "POST", "/search", json={"query": "x"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert call(state, "GET", "/info", headers={"X-API-Key": KEY}).status_code == 200


def test_health_answers_while_loading_and_others_wait(hds):
    state = make_state(hds, load=False)
    r = call(state, "GET", "/health")
    assert r.status_code == 200 and r.json() == {"status": "loading", "ready": False}
    r = call(state, "POST", "/search", json={"query": "x"})
    assert r.status_code == 503 and "still loading" in error_of(r)
    state.load()
    assert call(state, "GET", "/health").json() == {"status": "ok", "ready": True, "revision": hds.revision}
    broken = ServerState(ServeConfig(str(hds.root / "missing"), lm=None))

    async def boot():  # load=True: loads in a background thread at startup; a failure is reported
        app = create_app(broken, load=True)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relm") as c:
                for _ in range(100):
                    if broken.error:
                        break
                    await asyncio.sleep(0.02)
                return await c.get("/health"), await c.post("/search", json={"query": "x"})

    health, search = asyncio.run(boot())
    assert health.status_code == 503 and health.json()["status"] == "error" and "missing" in health.json()["error"]
    assert search.status_code == 503 and "could not load" in error_of(search)


def test_info_and_metrics(hds):
    state = make_state(hds)
    call(state, "POST", "/search", json={"query": "repeat me", "k": 2})
    call(state, "POST", "/search", json={"query": "repeat me", "k": 2})  # a cache hit
    call(state, "POST", "/search", json={"query": "x", "k": 0})
    info = call(state, "GET", "/info").json()
    assert info["datastore"]["counts"]["passages"] == len(hds) and info["datastore"]["revision"] == hds.revision
    assert info["serving"]["primary"] == "exact" and info["serving"]["config"]["max_k"] == 1000
    r = call(state, "GET", "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'relm_requests_total{endpoint="/search",status="200"} 2.0' in text
    assert 'relm_errors_total{endpoint="/search",status="422"} 1.0' in text
    assert 'relm_request_seconds_bucket{endpoint="/search",le="0.5"}' in text
    assert "relm_search_batch_queries_count 2.0" in text
    assert "relm_cache_hit_rate 0.5" in text and f"relm_datastore_revision {float(hds.revision)}" in text


# -- generation -------------------------------------------------------------------------------------------

def test_generate_equals_generate_stream_and_cites(hds, tiny_lm):
    state = make_state(hds, tiny_lm)
    prompt = make_text(3, 12)
    body = {"prompt": prompt, "max_new_tokens": 12, "k": 2, "retrieve_every": 4, "domains": ["alpha"]}
    r = call(state, "POST", "/generate", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    config = GenerationConfig(max_new_tokens=12, k=2, retrieve_every=4)
    ref = list(generate_stream(tiny_lm, state.retriever(), prompt, config, search_options={"domains": ("alpha",)}))
    assert got["text"] == ref[-1].text and got["token_ids"] == list(ref[-1].token_ids)
    assert len(got["retrievals"]) == 3 and got["finish_reason"] in ("length", "eos")
    passages = got["passages"]
    assert passages and all(p["domain"] == "alpha" and p["text"] for p in passages)
    assert {p["passage_id"] for p in passages} == {i for c in got["citations"] for i in c["passage_ids"]}


def test_generate_streams_server_sent_events(hds, tiny_lm):
    state = make_state(hds, tiny_lm)
    r = call(state, "POST", "/generate", json={"prompt": make_text(4, 10), "max_new_tokens": 9, "retrieve_every": 3,
                                                "stream": True, "stop_at_eos": False})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [n for n, _ in events]
    assert names[0] == "retrieval" and names[-1] == "done" and names.count("token") >= 9
    data = [json.loads(d) for _, d in events]
    assert "".join(d["text"] for d in data if d["type"] == "token") == data[-1]["text"]
    assert data[-1]["passages"] and data[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": ""}, 422, "prompt is empty"),
    ({"prompt": "x", "max_new_tokens": 5000}, 422, "max_new_tokens = 5,000 exceeds this server's limit of 1,024"),
    ({"prompt": "x " * 20000}, 422, "the prompt's length in characters = 40,000 exceeds"),
    ({"prompt": "x", "mode": "fast"}, 422, "mode: Input should be"),
    ({"prompt": "x", "temperature": -1}, 422, "temperature: Input should be greater than or equal to 0"),
    ({"prompt": "x", "max_new_tokens": 2, "k": 2000}, 422, "k = 2,000 exceeds"),
])
def test_bad_generate_requests(hds, tiny_lm, body, status, message):
    r = call(make_state(hds, tiny_lm, max_body_bytes=1 << 20), "POST", "/generate", json=body)
    assert r.status_code == status and message in error_of(r), r.text


def test_a_prompt_too_long_for_the_lm_is_an_http_error_even_streamed(hds, tiny_lm):
    r = call(make_state(hds, tiny_lm), "POST", "/generate", json={"prompt": make_text(1, 600), "stream": True})
    assert r.status_code == 422 and "context is 512" in error_of(r)


def test_search_only_server_refuses_generation(hds):
    r = call(make_state(hds), "POST", "/generate", json={"prompt": "hello"})
    assert r.status_code == 422 and "--lm none" in error_of(r)


def test_generation_timeout_fires_and_stops_the_worker(hds, tiny_lm):
    state = make_state(hds, tiny_lm, timeout_s=0.3)
    t0 = time.perf_counter()
    r = call(state, "POST", "/generate", json={"prompt": make_text(2, 10), "max_new_tokens": 1024,
                                                "stop_at_eos": False, "retrieve_every": 1})
    assert r.status_code == 504 and "generation was stopped" in error_of(r)
    assert time.perf_counter() - t0 < 2.0
    assert state.metrics.gen_active._value.get() == 0
    assert state.metrics.generations.labels("timeout")._value.get() == 1
    r = call(state, "POST", "/generate", json={"prompt": make_text(2, 10), "max_new_tokens": 1024, "stream": True,
                                                "stop_at_eos": False, "retrieve_every": 1})
    last_name, last = sse_events(r.text)[-1]  # streamed: the status went out first; the error is the last event
    assert last_name == "error" and json.loads(last)["error"]["code"] == 504


def test_searches_do_not_wait_for_generations(hds, tiny_lm):
    state = make_state(hds, tiny_lm, gen_threads=1)

    async def both():
        async with client(state) as c:
            gen = asyncio.create_task(c.post("/generate", json={"prompt": make_text(2, 10), "max_new_tokens": 300,
                                                                "stop_at_eos": False}))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            s = await c.post("/search", json={"query": "whale ship", "k": 3})
            search_s = time.perf_counter() - t0
            return s, search_s, await gen

    s, search_s, g = asyncio.run(both())
    assert s.status_code == 200 and g.status_code == 200
    assert search_s < g.json()["timing"]["total"] / 2, (search_s, g.json()["timing"])


# -- OpenAI shapes, in-process ------------------------------------------------------------------------------

def test_openai_completions_and_chat_in_process(hds, tiny_lm):
    state = make_state(hds, tiny_lm)
    r = call(state, "POST", "/v1/completions", json={"prompt": make_text(6, 10), "max_tokens": 5, "temperature": 0,
                                                      "k": 1, "frequency_penalty": 0})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= 5
    assert body["choices"][0]["finish_reason"] in ("length", "stop") and body["retrieved"][0]["text"]
    r = call(state, "POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "whale ship"}],
                                                           "max_tokens": 4, "stream": True})
    events = [d for _, d in sse_events(r.text)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(d) for d in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop") and "retrieved" in chunks[-1]
    for body, message in [({"prompt": "x", "n": 2}, "n = 2"), ({"prompt": ["a", "b"]}, "one string"),
                          ({"prompt": "x", "max_tokens": 4096}, "max_tokens = 4,096 exceeds")]:
        r = call(state, "POST", "/v1/completions", json=body)
        assert r.status_code == 422 and message in error_of(r)


def test_a_chat_retrieves_with_its_last_user_message(tiny_lm):
    from relm.serve.openai_compat import chat_request
    from relm.serve.schemas import ChatRequest

    req = ChatRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "whale"},
                                {"role": "assistant", "content": "A mammal."}, {"role": "user", "content": "ship?"}],
                      max_tokens=4)
    prompt, _, _, query = chat_request(req, tiny_lm, ServeConfig("ds", lm=None))
    assert query == "ship?" and "whale" in prompt and "Be brief." in prompt


# -- one real server process: the openai client, disconnects, `relm add` while serving ------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, encoder, tiny_lm_dir):
    """`relm serve` in a subprocess on a free loopback port: a MiniLM datastore, the tiny LM, an API key."""
    import os
    import subprocess
    import sys

    from relm import BuildConfig, ChunkConfig, build_datastore

    from conftest import corpus_records, write_jsonl

    root = tmp_path_factory.mktemp("served")
    corpus = write_jsonl(root / "c.jsonl", corpus_records(n_docs=8))
    build_datastore([corpus], root / "ds", BuildConfig(chunk=ChunkConfig(max_words=40, min_words=5), shard_size=16),
                    encoder=encoder, show_progress=False)
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "relm", "serve", str(root / "ds"), "--port", str(port), "--lm",
                             str(tiny_lm_dir), "--refresh-s", "0.1", "--gen-threads", "2", "--cache-mb", "4"],
                            env={**os.environ, "RELM_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert proc.poll() is None, (root / "server.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).json()["ready"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the server did not become ready in 60 s: " + (root / "server.log").read_text())
        yield {"base": base, "root": root, "proc": proc, "log": root / "server.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", headers={"X-API-Key": KEY}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def server_errors(base: str) -> float:
    """Requests answered 5xx so far, over every endpoint."""
    text = httpx.get(f"{base}/metrics", headers={"X-API-Key": KEY}).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("relm_errors_total{") and 'status="5' in line)


# one server process (loads torch, MiniLM and the LM: ~10 s on 2 busy cores) serves these four tests
def test_the_openai_client_works_against_relm(server):
    import openai

    client = openai.OpenAI(base_url=f"{server['base']}/v1", api_key=KEY, max_retries=0)
    prompt = make_text(7, 10)
    c = client.completions.create(model="relm", prompt=prompt, max_tokens=6, temperature=0, extra_body={"k": 1})
    assert c.object == "text_completion" and c.choices[0].finish_reason in ("length", "stop")
    assert c.usage.completion_tokens <= 6 and c.model_extra["retrieved"][0]["text"]
    streamed = list(client.completions.create(model="relm", prompt=prompt, max_tokens=6, temperature=0, stream=True,
                                              extra_body={"k": 1}))
    assert "".join(ch.choices[0].text for ch in streamed) == c.choices[0].text  # greedy: the same text
    assert streamed[-1].choices[0].finish_reason == c.choices[0].finish_reason
    assert streamed[-1].model_extra["retrieved"] == c.model_extra["retrieved"]

    messages = [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "whale ship captain"}]
    chat = client.chat.completions.create(model="relm", messages=messages, max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.model_extra["retrieved"]
    parts = list(client.chat.completions.create(model="relm", messages=messages, max_tokens=5, temperature=0,
                                                stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server['base']}/v1", api_key="wrong-key-123", max_retries=0).completions.create(
            model="relm", prompt="x", max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        client.completions.create(model="relm", prompt="x", max_tokens=100_000)


def test_a_client_that_disconnects_mid_stream_cancels_its_generation(server):
    base = server["base"]
    before = metric(base, 'relm_generations_total{finish="disconnected"}')
    body = {"prompt": make_text(2, 10), "max_new_tokens": 1024, "stop_at_eos": False, "stream": True}
    with httpx.stream("POST", f"{base}/generate", json=body, headers={"X-API-Key": KEY}, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        tokens = 0
        while tokens < 3:
            tokens += next(lines) == "event: token"
    for _ in range(100):  # the server notices at its next write, sets the cancel event, the worker stops
        if metric(base, 'relm_generations_total{finish="disconnected"}') > before \
                and metric(base, "relm_generations_active") == 0:
            break
        time.sleep(0.05)
    assert metric(base, 'relm_generations_total{finish="disconnected"}') == before + 1, server["log"].read_text()
    assert metric(base, "relm_generations_active") == 0
    assert httpx.get(f"{base}/health").json()["ready"]


# `relm add` loads MiniLM in its own process
def test_relm_add_while_serving_is_picked_up_without_dropping_requests(server):
    import subprocess
    import sys
    import threading

    from conftest import write_jsonl

    base, headers = server["base"], {"Authorization": f"Bearer {KEY}"}
    query = "lighthouse keeper rowing through the storm"
    revision = httpx.get(f"{base}/health").json()["revision"]
    statuses, tops, stop = [], [], threading.Event()

    def hammer():
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/search", json={"query": query, "k": 2})
                statuses.append(r.status_code)
                tops.append(r.json()["hits"][0]["doc_id"] if r.status_code == 200 else None)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    extra = write_jsonl(server["root"] / "extra.jsonl", [{"id": "storm", "text": f"{query}. " + make_text(300, 40)}])
    try:
        out = subprocess.run([sys.executable, "-m", "relm", "add", str(server["root"] / "ds"), str(extra),
                              "--no-progress"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        for _ in range(100):
            if tops and tops[-1] == "storm":
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200}, f"{len(statuses)} requests: {sorted(set(statuses))}"
    assert tops[0] != "storm" and tops[-1] == "storm"
    assert httpx.get(f"{base}/health").json()["revision"] == revision + 1
    assert httpx.get(f"{base}/info", headers=headers).json()["datastore"]["counts"]["documents"] == 9
    assert server_errors(base) == 0


@pytest.mark.parametrize("argv, message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from other machines and no API key is set"),
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max-k", "0"], "max_k (--max-k) must be"),
    (["--timeout", "0"], "timeout_s (--timeout)"),
    (["--api-key", "short"], "at least 8 characters"),
    (["--retriever", "ann"], "--retriever ann needs --index NAME"),
])
def test_relm_serve_bad_flags_are_one_line(hds, argv, message, capsys, monkeypatch):
    from relm.cli import main

    monkeypatch.delenv("RELM_API_KEY", raising=False)
    assert main(["serve", str(hds.root), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_relm_serve_refuses_a_missing_datastore(tmp_path, capsys):
    from relm.cli import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "no such datastore directory" in capsys.readouterr().err


def test_the_page_is_served_without_a_key_and_holds_no_data(hds):
    r = call(make_state(hds, key=KEY), "GET", "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="search-form"' in r.text and 'id="gen-form"' in r.text and str(hds.root) not in r.text


def chromium_driver():
    """A headless Chromium (Debian's chromium + chromium-driver) under selenium, or a skip saying why."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver (scripts/setup.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


# Chromium starts in seconds; the server fixture loads models
def test_the_page_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium_driver()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(server["base"] + "/")
        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        wait.until(EC.text_to_be_present_in_element((By.ID, "info"), "passages"))
        browser.find_element(By.ID, "query").send_keys("whale ship captain")
        browser.find_element(By.ID, "search-button").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#hits .hit")))
        hits = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
        assert len(hits) == 5
        scores = [float(h.find_element(By.CLASS_NAME, "score").text) for h in hits]
        assert scores == sorted(scores, reverse=True)
        marked = {m.text.lower() for m in browser.find_elements(By.CSS_SELECTOR, "#hits mark")}
        assert marked and marked <= {"whale", "ship", "captain"}
        assert all(h.find_element(By.CLASS_NAME, "domain").text in ("alpha", "beta") for h in hits)

        browser.find_element(By.ID, "prompt").send_keys(make_text(9, 12))
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("24")
        browser.find_element(By.ID, "gen-button").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#citations .cite")))
        assert browser.find_element(By.ID, "output").text.strip()
        assert "tokens" in browser.find_element(By.ID, "gen-status").text
        assert browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()


def test_hit_rows_are_hit_to_dict(hds):
    from dataclasses import fields

    from relm.datastore.store import Hit
    from relm.serve.state import HIT_FIELDS, hit_row

    assert HIT_FIELDS == tuple(f.name for f in fields(Hit))
    hit = Hit(3, 0.5, "t", 1, "d1", "alpha", "T", 1_000_000, "src", {"a": [1.0, float("nan")], "b": {"c": "x"}})
    assert hit_row(hit) == {**hit.to_dict(), "metadata": {"a": [1.0, None], "b": {"c": "x"}}}
    hit.metadata = {"k": 1}
    assert hit_row(hit) == hit.to_dict()


def test_torch_threads_share_the_cpus():
    c = ServeConfig("ds", search_threads=1, gen_threads=2)
    assert c.torch_threads_for(2) == 1 and c.torch_threads_for(32) == 10 and c.torch_threads_for(None) == 1
    assert ServeConfig("ds", torch_threads=3).torch_threads_for(2) == 3
