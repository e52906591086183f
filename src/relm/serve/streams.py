"""Generation as the server runs it: `agenerate_stream` in the server's generation threads, under the
request's deadline, counted in the metrics, ending (timeout, client gone, error) with the generation's
cancel event set; the passages cited, looked up; server-sent events.

The app awaits the first event before a stream's response starts, so a bad prompt (too many tokens for the
LM, say) is still an HTTP error and not a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from ..generation import DoneEvent, agenerate_stream, event_dict
from .errors import RequestTimeout, describe

log = logging.getLogger(__name__)


async def generation_events(state, prompt: str, config, opts, deadline: float) -> AsyncIterator[Any]:
    """The events of one generation, ended by `deadline` (time.monotonic()) with a RequestTimeout; the
    agenerate_stream underneath is closed whatever ends this (its cancel event stops the worker thread)."""
    if state.lm is None:
        from ..errors import ConfigError

        raise ConfigError("this server was started with --lm none (search only); restart it with --lm smollm2 "
                          "or a model directory to generate")
    state.refresh()
    retriever = state.retriever() if config.retrieval else None
    agen = agenerate_stream(state.lm, retriever, prompt, config, search_options=opts, executor=state.gen_pool)
    metrics, finish = state.metrics, "error"
    metrics.gen_active.inc()
    try:
        while True:
            try:  # in this task (no wait_for task), so a cancellation reaches agen where it waits
                async with asyncio.timeout_at(deadline):  # the loop's clock is time.monotonic()
                    event = await agen.__anext__()
            except StopAsyncIteration:
                break
            if isinstance(event, DoneEvent):
                finish = event.finish_reason
                metrics.tokens.inc(len(event.token_ids))
            yield event
    except TimeoutError:
        finish = "timeout"
        raise RequestTimeout(f"the request took longer than {state.config.timeout_s:g} s (--timeout); the "
                             "generation was stopped") from None
    except (asyncio.CancelledError, GeneratorExit):
        finish = "disconnected"
        raise
    finally:
        metrics.gen_active.dec()  # before any await: a cancelled scope may interrupt those
        metrics.generations.labels(finish).inc()
        with contextlib.suppress(RuntimeError):
            await agen.aclose()  # sets the cancel event (if agen has not ended already) and waits for the worker


def cited_passages(ds, citations) -> list[dict[str, Any]]:
    """The passages a generation had in context, with the [start, end) new-token span of each set: what the
    OpenAI endpoints return as `retrieved` and /generate as `passages`."""
    out = []
    for c in citations:
        for pid, score in zip(c["passage_ids"], c["scores"], strict=True):
            doc = ds.document(int(ds.doc_index[pid]))
            out.append({"passage_id": int(pid), "score": float(score), "doc_id": doc.get("id"),
                        "title": doc.get("title"), "domain": doc.get("domain"), "text": ds.passage(int(pid)),
                        "start": c["start"], "end": c["end"]})
    return out


def done_dict(state, event: DoneEvent) -> dict[str, Any]:
    d = event_dict(event)
    d["passages"] = cited_passages(state.ds, event.citations)
    return d


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event: `event: NAME` (optional) and one `data:` line of JSON (or a plain string)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def sse_error(exc: BaseException) -> str:
    """The last event of a stream that failed after it started: the error body the status would carry."""
    status, body = describe(exc)
    return sse(body, "error")
