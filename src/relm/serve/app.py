"""`create_app(state)`: the FastAPI app of a `ServerState`.

GET /health (no key; answers while loading), POST /search (batched), POST /generate (JSON, or SSE with
"stream": true), POST /v1/completions and /v1/chat/completions (OpenAI), GET /info, GET /metrics, GET /
(the web page). Searches never wait for generations: they run in the batcher's threads, generations in
the state's generation threads. Every request ends within --timeout (504).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..generation import DoneEvent, RetrievalEvent, TokenEvent, event_dict
from . import errors, openai_compat
from .batching import SearchBatcher
from .bounds import generate_request, search_request
from .errors import RequestTimeout
from .metrics import CONTENT_TYPE
from .schemas import ChatRequest, CompletionRequest, GenerateRequest, SearchRequest
from .security import ApiKeyAndBodyLimit
from .streams import done_dict, generation_events, sse, sse_error

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")
ENDPOINTS = ("/", "/health", "/search", "/generate", "/v1/completions", "/v1/chat/completions", "/info", "/metrics")


class ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body iterator however the response ends (a client that
    disconnects mid-stream included), so the generation under it is cancelled at once, not at GC."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class RequestMetrics:
    """ASGI middleware: count and time every answer by endpoint and status (streams: to the last byte)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        t0, status = time.perf_counter(), [500]

        async def timed_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.observe(endpoint, status[0], time.perf_counter() - t0)


def _timeout(state) -> RequestTimeout:
    return RequestTimeout(f"the request took longer than {state.config.timeout_s:g} s (--timeout)")


def create_app(state, *, load: bool = False, on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    """The app serving `state`; `load`: load it in a background thread at startup (/health answers meanwhile)."""
    config = state.config
    batcher = SearchBatcher(state.search_rows, window_s=config.batch_window_ms / 1000, max_batch=config.max_batch,
                            workers=config.search_threads, on_batch=state.metrics.batch)

    def load_state():
        try:
            state.load()
        except Exception:
            if on_load_failure is not None:
                on_load_failure()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if load and not state.ready:
            threading.Thread(target=load_state, name="relm-load", daemon=True).start()
        yield
        await batcher.close()
        state.close()

    app = FastAPI(title="relm", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    app.add_middleware(ApiKeyAndBodyLimit, api_key=state.api_key, max_body_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # added last: outermost, sees 401s and 413s
    app.state.relm = state
    app.state.batcher = batcher

    @app.get("/health")
    async def health():
        body = {"status": "error" if state.error else "ok" if state.ready else "loading", "ready": state.ready}
        if state.error:
            body["error"] = state.error
        if state.ready:
            body["revision"] = state.ds.revision
        return JSONResponse(body, status_code=503 if state.error else 200)

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/info")
    async def info():
        return JSONResponse(await run_in_threadpool(state.info))

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.text(), media_type=CONTENT_TYPE)

    @app.post("/search")
    async def search(req: SearchRequest):
        state.check_ready()
        kind, opts, texts = search_request(req, config)
        kind = kind or state.primary
        if kind not in state.retrievers:  # opened at first use; an unknown or unservable kind is a 422 here
            await run_in_threadpool(state.retriever, kind)
        try:
            rows = await asyncio.wait_for(batcher.search((kind, opts), texts), config.timeout_s)
        except TimeoutError:
            raise _timeout(state) from None
        if req.query is not None:
            return JSONResponse({"query": req.query, "retriever": kind, "hits": rows[0], **_partial(rows[0])})
        return JSONResponse({"retriever": kind, "results": [{"query": q, "hits": h, **_partial(h)}
                                                            for q, h in zip(texts, rows, strict=True)]})

    def start(prompt, gconfig, opts, query=None):
        state.check_ready()
        return generation_events(state, prompt, gconfig, opts, time.monotonic() + config.timeout_s, query=query)

    async def collect(events) -> list:
        async with contextlib.aclosing(events):
            return [e async for e in events]

    def streamed(events, first, render) -> ClosingStream:
        """SSE of `render(event) -> str` for the first event and the rest; an error after the start is the
        last event (the status was sent already)."""

        async def body():
            try:
                yield render(first)
                async for e in events:
                    yield render(e)
            except Exception as e:  # noqa: BLE001 (described, never a traceback)
                yield sse_error(e)
            finally:
                await events.aclose()

        return ClosingStream(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/generate")
    async def generate(req: GenerateRequest):
        state.check_ready()
        events = start(*generate_request(req, config))
        if not req.stream:
            got = await collect(events)
            done = got[-1]
            body = done_dict(done)
            body["retrievals"] = [event_dict(e) for e in got if isinstance(e, RetrievalEvent)]
            return JSONResponse(body)
        first = await events.__anext__()

        def render(e):
            return sse(done_dict(e) if isinstance(e, DoneEvent) else event_dict(e), e.type)

        return streamed(events, first, render)

    async def openai_answer(events, stream: bool, rid: str, model: str, whole, chunk, chat: bool):
        if not stream:
            done = (await collect(events))[-1]
            return JSONResponse(whole(rid, model, done, done_dict(done)["passages"]))
        first = await events.__anext__()
        started = [False]

        def render(e):
            out = ""
            if chat and not started[0]:
                started[0] = True
                out += sse(chunk(rid, model, {"role": "assistant", "content": ""}))
            if isinstance(e, TokenEvent) and e.text:
                out += sse(chunk(rid, model, {"content": e.text} if chat else e.text))
            elif isinstance(e, DoneEvent):
                finish = openai_compat.FINISH.get(e.finish_reason, "stop")
                out += sse(chunk(rid, model, {} if chat else "", finish, usage=openai_compat.usage(e),
                                 retrieved=done_dict(e)["passages"]))
                out += sse("[DONE]")
            return out

        return streamed(events, first, render)

    def model_name(req) -> str:
        return req.model or (state.lm.name if state.lm is not None else "none")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        state.check_ready()
        events = start(*openai_compat.completion_request(req, config))
        return await openai_answer(events, req.stream, openai_compat.new_id("cmpl"), model_name(req),
                                   openai_compat.completion, openai_compat.completion_chunk, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        state.check_ready()
        events = start(*openai_compat.chat_request(req, state.lm, config))
        return await openai_answer(events, req.stream, openai_compat.new_id("chatcmpl"),
                                   model_name(req), openai_compat.chat_completion,
                                   openai_compat.chat_chunk, chat=True)

    return app


def _partial(hits) -> dict:
    """`{"partial": {"left_out": [...]}}` for hits a sharded search answered without some shard, else {}."""
    left_out = getattr(hits, "left_out", None)
    return {"partial": {"left_out": left_out}} if left_out else {}
