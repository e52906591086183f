"""Generation as the server runs it: `agenerate_stream` in the server's generation threads, under the
request's deadline, counted in the metrics, ending (timeout, client gone, error) with the generation's
cancel event set; the passages cited, looked up; server-sent events.

The app awaits the first event before a stream's response starts, so a bad prompt (too many tokens for the
LM, say) is still an HTTP error and not a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from ..generation import DoneEvent, agenerate_stream, event_dict
from .errors import RequestTimeout, describe

log = logging.getLogger(__name__)


async def generation_events(state, prompt: str, config, opts, deadline: float,
                            query: str | None = None) -> AsyncIterator[Any]:
    """The events of one generation, ended by `deadline` (time.monotonic()) with a RequestTimeout; the
    agenerate_stream underneath is closed whatever ends this (its cancel event stops the worker thread).
    `query`: the first retrieval's query (default the prompt; a chat's last user message)."""
    if state.lm is None:
        from ..errors import ConfigError

        raise ConfigError("this server was started with --lm none (search only); restart it with --lm smollm2 "
                          "or a model directory to generate")
    state.refresh()
    retriever = state.retriever() if config.retrieval else None
    ds = retriever.ds if retriever is not None else None  # the revision the passage ids refer to
    agen = agenerate_stream(state.lm, retriever, prompt, config, search_options=opts, executor=state.gen_pool,
                            query=query)
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
                event = dataclasses.replace(event, citations=tuple({**c, "passages": cited_passages(ds, c)}
                                                                   for c in event.citations))
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


def cited_passages(ds, citation: dict[str, Any]) -> list[dict[str, Any]]:
    """The passages of one citation (a set in context for new tokens [start, end)), looked up in `ds`, the
    revision the generation retrieved from: what /generate returns as `passages`, OpenAI as `retrieved`."""
    out = []
    for pid, score in zip(citation["passage_ids"], citation["scores"], strict=True):
        doc = ds.document(int(ds.doc_index[pid]))
        out.append({"passage_id": int(pid), "score": float(score), "doc_id": doc.get("id"),
                    "title": doc.get("title"), "domain": doc.get("domain"), "text": ds.passage(int(pid)),
                    "start": citation["start"], "end": citation["end"]})
    return out


def done_dict(event: DoneEvent) -> dict[str, Any]:
    """The final event as JSON, with every cited passage in one list (`passages`)."""
    d = event_dict(event)
    d["citations"] = [{k: v for k, v in c.items() if k != "passages"} for c in event.citations]
    d["passages"] = [p for c in event.citations for p in c.get("passages", ())]
    return d


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event: `event: NAME` (optional) and one `data:` line of JSON (or a plain string)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def sse_error(exc: BaseException) -> str:
    """The last event of a stream that failed after it started: the error body the status would carry."""
    status, body = describe(exc)
    return sse(body, "error")
